//! `cargo xtask bench plugins`: zstd and AES-256-GCM natively and as plugins, and the
//! compress-then-encrypt pipeline both ways, single-threaded, on a generated mixed disk
//! image (about 40 % zeros, 30 % text-like, 30 % random), in 1 MiB and 64 KiB chunks.
//! MB/s = 10^6 bytes of input per second. Writes `target/bench/plugins.json`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use aes_gcm::aead::{AeadInPlace, KeyInit};
use lifeboat_plugin_host::config::PluginsConfig;
use lifeboat_plugin_host::keys::{Algorithm, Key, KeyRing};
use lifeboat_plugin_host::manifest::Manifest;
use lifeboat_plugin_host::{CipherInstance, CodecInstance, Host};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

const TOTAL: usize = 96 << 20;

/// The mixed image: 64 KiB regions, by a fixed pattern, 40 % zero, 30 % text, 30 % random.
fn mixed_image(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "replica",
        "disk",
        "lifeboat",
        "the",
        "recovery",
        "point",
        "of",
        "server",
        "data",
        "and",
        "log",
        "error",
        "INFO",
        "2026-11-26",
        "GET",
        "/index.html",
        "200",
        "user",
        "session",
        "=",
    ];
    let mut out = Vec::with_capacity(len);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut region = 0usize;
    while out.len() < len {
        let end = (out.len() + (64 << 10)).min(len);
        match region % 10 {
            0..=3 => out.resize(end, 0),
            4..=6 => {
                while out.len() < end {
                    out.extend_from_slice(WORDS[(next() % WORDS.len() as u64) as usize].as_bytes());
                    out.push(if next() % 8 == 0 { b'\n' } else { b' ' });
                }
                out.truncate(end);
            }
            _ => {
                while out.len() < end {
                    out.extend_from_slice(&next().to_le_bytes());
                }
                out.truncate(end);
            }
        }
        region += 1;
    }
    out
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    (bytes as f64 / 1e6 / secs * 10.0).round() / 10.0
}

fn plugins_dir() -> PathBuf {
    std::env::var_os("LIFEBOAT_PLUGINS_DIR")
        .map(PathBuf::from)
        .expect("LIFEBOAT_PLUGINS_DIR: run through `cargo xtask bench plugins`")
}

struct Figures {
    zstd: (f64, f64),
    aes: (f64, f64),
    /// RustCrypto's `aes-gcm` crate, for comparison with ring's (which the host uses).
    aes_rustcrypto: f64,
    pipeline: (f64, f64),
}

async fn measure(
    data: &[u8],
    chunk: usize,
    codec: &mut CodecInstance,
    cipher: &mut CipherInstance,
) -> Figures {
    let key = [7u8; 32];
    let rustcrypto = aes_gcm::Aes256Gcm::new(&key.into());
    let aes = Key::new("k1", Algorithm::Aes256Gcm, &key, true);
    let mut native_zstd = zstd::bulk::Compressor::new(1).unwrap();
    let mut buf: Vec<u8> = Vec::with_capacity(chunk + 64);
    let mut comp: Vec<u8> = Vec::with_capacity(chunk + 64);

    // zstd native
    let t = Instant::now();
    for c in data.chunks(chunk) {
        comp.clear();
        let _ = native_zstd.compress_to_buffer(c, &mut comp);
    }
    let zn = mbps(data.len(), t.elapsed().as_secs_f64());
    // zstd plugin
    let t = Instant::now();
    for c in data.chunks(chunk) {
        std::hint::black_box(codec.compress(1, c).await.unwrap());
    }
    let zp = mbps(data.len(), t.elapsed().as_secs_f64());
    // aes native: the host's AEAD (ring), then RustCrypto's for comparison
    let t = Instant::now();
    for (i, c) in data.chunks(chunk).enumerate() {
        buf.clear();
        buf.extend_from_slice(c);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        aes.seal_in_place(&nonce, b"aad", &mut buf).unwrap();
    }
    let an = mbps(data.len(), t.elapsed().as_secs_f64());
    let t = Instant::now();
    for (i, c) in data.chunks(chunk).enumerate() {
        buf.clear();
        buf.extend_from_slice(c);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        rustcrypto.encrypt_in_place((&nonce).into(), b"aad", &mut buf).unwrap();
    }
    let arc = mbps(data.len(), t.elapsed().as_secs_f64());
    // aes plugin
    let t = Instant::now();
    for c in data.chunks(chunk) {
        std::hint::black_box(cipher.seal(b"aad", c).await.unwrap());
    }
    let ap = mbps(data.len(), t.elapsed().as_secs_f64());
    // pipeline native: compress (keep raw when not smaller), then encrypt
    let t = Instant::now();
    for (i, c) in data.chunks(chunk).enumerate() {
        comp.clear();
        let ok = native_zstd.compress_to_buffer(c, &mut comp).is_ok() && comp.len() < c.len();
        buf.clear();
        buf.extend_from_slice(if ok { &comp } else { c });
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        aes.seal_in_place(&nonce, b"aad", &mut buf).unwrap();
    }
    let pn = mbps(data.len(), t.elapsed().as_secs_f64());
    // pipeline through plugins
    let t = Instant::now();
    for c in data.chunks(chunk) {
        let enc = codec.compress(1, c).await.unwrap();
        std::hint::black_box(cipher.seal(b"aad", &enc.data).await.unwrap());
    }
    let pp = mbps(data.len(), t.elapsed().as_secs_f64());
    Figures { zstd: (zn, zp), aes: (an, ap), aes_rustcrypto: arc, pipeline: (pn, pp) }
}

fn shape(f: &Figures) -> serde_json::Value {
    json!({
        "stages": {
            "zstd": {"native_mbps": f.zstd.0, "plugin_mbps": f.zstd.1},
            "aes-gcm": {"native_mbps": f.aes.0, "plugin_mbps": f.aes.1, "native_rustcrypto_mbps": f.aes_rustcrypto},
        },
        "pipeline": {
            "native_mbps": f.pipeline.0,
            "plugin_mbps": f.pipeline.1,
            "ratio": ((f.pipeline.1 / f.pipeline.0) * 1000.0).round() / 1000.0,
        },
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = PluginsConfig {
            dir: dir.clone(),
            cache_dir: Some(tmp.path().join("cache")),
            trusted_keys: vec![],
            allow_unsigned: false,
            grants: Default::default(),
        };
        for n in ["zstd", "aes-gcm"] {
            for ext in ["wasm", "toml"] {
                std::fs::copy(plugins_dir().join(format!("{n}.{ext}")), dir.join(format!("{n}.{ext}"))).unwrap();
            }
            let m = Manifest::load(&dir.join(format!("{n}.toml"))).unwrap();
            config.grants.entry(n.into()).or_default().sha256 = Some(m.sha256);
        }
        let host = Host::new(KeyRing::new(vec![Key::new("k1", Algorithm::Aes256Gcm, &[7; 32], true)])).unwrap();
        // Cold compile once (fills the cache), then time cached loads.
        host.load(&dir.join("zstd.wasm"), &config).unwrap();
        let t = Instant::now();
        let runs = 20;
        let mut zstd_plugin = None;
        for _ in 0..runs {
            zstd_plugin = Some(host.load(&dir.join("zstd.wasm"), &config).unwrap());
        }
        let cached_load_ms = (t.elapsed().as_secs_f64() * 1000.0 / runs as f64 * 100.0).round() / 100.0;
        let zstd_plugin = zstd_plugin.unwrap();
        let t = Instant::now();
        let runs = 200;
        for _ in 0..runs {
            std::hint::black_box(CodecInstance::new(zstd_plugin.clone()).await.unwrap());
        }
        let instantiate_us = (t.elapsed().as_secs_f64() * 1e6 / runs as f64 * 10.0).round() / 10.0;
        let aes_plugin = host.load(&dir.join("aes-gcm.wasm"), &config).unwrap();
        let mut codec = CodecInstance::new(zstd_plugin).await.unwrap();
        let mut cipher = CipherInstance::new(aes_plugin).await.unwrap();

        let data = mixed_image(TOTAL);
        // Warm up both paths once.
        measure(&data[..8 << 20], 1 << 20, &mut codec, &mut cipher).await;
        let big = measure(&data, 1 << 20, &mut codec, &mut cipher).await;
        let small = measure(&data, 64 << 10, &mut codec, &mut cipher).await;

        let mut out = shape(&big);
        out["instantiate_us"] = json!(instantiate_us);
        out["cached_load_ms"] = json!(cached_load_ms);
        out["chunk_64k"] = shape(&small);
        out["data_bytes"] = json!(TOTAL);

        println!("plugin benchmark: {} MiB mixed image, single thread, MB/s of input", TOTAL >> 20);
        println!("{:<22} {:>12} {:>12} {:>12} {:>12}", "", "native 1M", "plugin 1M", "native 64K", "plugin 64K");
        for (name, a, b) in [
            ("zstd-1", big.zstd, small.zstd),
            ("aes-256-gcm", big.aes, small.aes),
            ("zstd-1 + aes-256-gcm", big.pipeline, small.pipeline),
        ] {
            println!("{name:<22} {:>12} {:>12} {:>12} {:>12}", a.0, a.1, b.0, b.1);
        }
        println!("{:<22} {:>12} {:>12} {:>12} {:>12}", "aes-256-gcm RustCrypto", big.aes_rustcrypto, "-", small.aes_rustcrypto, "-");
        println!("pipeline ratio (plugin/native): 1 MiB {:.3}, 64 KiB {:.3}", big.pipeline.1 / big.pipeline.0, small.pipeline.1 / small.pipeline.0);
        println!("pooled instantiation + init of zstd: {instantiate_us} µs; cached load: {cached_load_ms} ms");

        let out_dir = std::env::var_os("LIFEBOAT_BENCH_OUT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/bench"));
        std::fs::create_dir_all(&out_dir).unwrap();
        let path = out_dir.join("plugins.json");
        std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
        println!("wrote {}", path.display());
    });
}
