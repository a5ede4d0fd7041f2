//! The OVA: an OVF 1.0 descriptor, a manifest of SHA-256 digests, and two streamOptimized
//! VMDKs (the OS disk, made by qemu-img from the raw image, and an empty data disk), in a
//! ustar archive with the descriptor first, as OVF 1.0 requires.

use crate::quickstart::sha256_file;
use crate::run;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The appliance VM's hardware.
pub const CPUS: u32 = 4;
pub const MEMORY_MIB: u32 = 8192;
/// The data disk's size (thin: an empty streamOptimized VMDK is a few KiB).
pub const DATA_DISK_GIB: u64 = 200;

/// `name.ova` in `out`, from `raw`; returns its path.
pub fn build(out: &Path, name: &str, version: &str, raw: &Path) -> Result<PathBuf> {
    let dir = out.join("work/ova");
    std::fs::create_dir_all(&dir)?;
    let os = format!("{name}-disk1.vmdk");
    let data = format!("{name}-data.vmdk");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vmdk", "-o", "subformat=streamOptimized,adapter_type=lsilogic"])
        .arg(raw)
        .arg(dir.join(&os)))?;
    run(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized,adapter_type=lsilogic",
        ])
        .arg(dir.join(&data))
        .arg(format!("{DATA_DISK_GIB}G")))?;
    let os_capacity = raw.metadata()?.len();
    let descriptor = descriptor(&Descriptor {
        name,
        version,
        os_file: &os,
        os_size: dir.join(&os).metadata()?.len(),
        os_capacity,
        data_file: &data,
        data_size: dir.join(&data).metadata()?.len(),
        data_capacity: DATA_DISK_GIB << 30,
    });
    let ovf = format!("{name}.ovf");
    std::fs::write(dir.join(&ovf), descriptor)?;
    let mf = format!("{name}.mf");
    let mut manifest = String::new();
    for f in [&ovf, &os, &data] {
        manifest.push_str(&format!("SHA256({f})= {}\n", sha256_file(&dir.join(f))?));
    }
    std::fs::write(dir.join(&mf), manifest)?;
    let ova = out.join(format!("{name}.ova"));
    let epoch = crate::package::source_date_epoch();
    run(Command::new("tar")
        .args(["--format=ustar", "--owner=0", "--group=0", "--numeric-owner", "--mode=0644"])
        .arg(format!("--mtime=@{epoch}"))
        .arg("-cf")
        .arg(&ova)
        .arg("-C")
        .arg(&dir)
        .args([&ovf, &mf, &os, &data]))?;
    if !ova.exists() {
        bail!("tar made no {}", ova.display());
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(ova)
}

/// What the descriptor names.
pub struct Descriptor<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub os_file: &'a str,
    pub os_size: u64,
    pub os_capacity: u64,
    pub data_file: &'a str,
    pub data_size: u64,
    pub data_capacity: u64,
}

/// The OVF 1.0 descriptor. RASD and VSSD elements are in the order their CIM schemas
/// require (alphabetical).
pub fn descriptor(d: &Descriptor) -> String {
    let Descriptor {
        name,
        version,
        os_file,
        os_size,
        os_capacity,
        data_file,
        data_size,
        data_capacity,
    } = *d;
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{os_file}" ovf:id="file1" ovf:size="{os_size}"/>
    <File ovf:href="{data_file}" ovf:id="file2" ovf:size="{data_size}"/>
  </References>
  <DiskSection>
    <Info>The OS disk (replaced on upgrade) and the data disk (state, cache, local replicas)</Info>
    <Disk ovf:capacity="{os_capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="os" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="{data_capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="data" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The network administrators and agents reach the appliance on</Info>
    <Network ovf:name="VM Network">
      <Description>HTTPS 443 (web UI, API, agent registration) and 9443 (agent data)</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>Lifeboat disaster-recovery appliance</Info>
    <Name>{name}</Name>
    <ProductSection>
      <Info>Lifeboat appliance: configuration server, process server and master target</Info>
      <Product>Lifeboat appliance</Product>
      <Vendor>Lifeboat</Vendor>
      <Version>{version}</Version>
      <FullVersion>{version}</FullVersion>
    </ProductSection>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian12_64Guest">
      <Info>The guest operating system</Info>
      <Description>Debian GNU/Linux 12 (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>{CPUS} virtual CPUs, {MEMORY_MIB} MiB of memory, two disks, one VMXNET3 network adapter</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{CPUS} virtual CPUs</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{CPUS}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>{MEMORY_MIB} MiB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{MEMORY_MIB}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>OS disk</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/os</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>1</rasd:AddressOnParent>
        <rasd:ElementName>Data disk</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/data</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VMXNET3 adapter on VM Network</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}
