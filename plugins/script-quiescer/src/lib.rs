//! The script quiescer: runs the site's own freeze and thaw commands around a cut.
//!
//! Settings (`plugins.grants.script-quiescer.settings` in the agent's configuration):
//!
//! | key | meaning |
//! | --- | --- |
//! | `freeze` | program and arguments, separated by spaces (no shell, no quoting): run at `freeze`, must exit 0 within the deadline |
//! | `thaw` | program and arguments run at `thaw` (optional) |
//! | `thaw_timeout_ms` | how long `thaw` may run (default 10000) |
//!
//! Both programs must also be listed in the grant's `commands`: the host runs nothing
//! else. A freeze command that fails, exits non-zero or passes the deadline fails the
//! freeze (the agent then cuts a crash-consistent point and raises an alert); the thaw
//! command still runs, so an application that the freeze script froze half way is
//! released.

use lifeboat_sdk::quiescer::{Quiescer, commands};
use lifeboat_sdk::{PluginError, Settings, setting};

/// A program with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    program: String,
    args: Vec<String>,
}

impl Command {
    /// Parses `"program arg arg"`; `key` names the setting in errors.
    pub fn parse(key: &str, text: &str) -> Result<Command, PluginError> {
        let mut words = text.split_whitespace().map(str::to_owned);
        let program = words.next().ok_or_else(|| {
            PluginError::Invalid(format!(
                "setting {key:?} is empty: write the program and its arguments, e.g. \"/usr/local/bin/app-freeze --flush\""
            ))
        })?;
        if !program.starts_with('/') {
            return Err(PluginError::Invalid(format!(
                "setting {key:?}: {program:?} is not an absolute path; the host runs programs by absolute path only"
            )));
        }
        Ok(Command { program, args: words.collect() })
    }

    fn run(&self, what: &str, timeout_ms: u32) -> Result<(), PluginError> {
        let out = commands::run(&self.program, &self.args, timeout_ms)?;
        if out.status == 0 {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String =
            stderr.trim().chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
        let why = if out.status < 0 {
            format!("was killed (deadline {timeout_ms} ms or a signal)")
        } else {
            format!("exited with status {}", out.status)
        };
        Err(PluginError::Internal(format!("{what} command {} {why}: {tail}", self.program)))
    }
}

/// The script quiescer's configuration and state.
#[derive(Debug)]
pub struct Script {
    freeze: Command,
    thaw: Option<Command>,
    thaw_timeout_ms: u32,
    frozen: bool,
}

impl Quiescer for Script {
    fn init(settings: Settings) -> Result<Self, PluginError> {
        let freeze = setting(&settings, "freeze").ok_or_else(|| {
            PluginError::Invalid(
                "setting \"freeze\" is missing: the command to run before the cut, e.g. freeze = \"/usr/local/bin/app-freeze\"".into(),
            )
        })?;
        let freeze = Command::parse("freeze", freeze)?;
        let thaw = setting(&settings, "thaw").map(|t| Command::parse("thaw", t)).transpose()?;
        let thaw_timeout_ms = match setting(&settings, "thaw_timeout_ms") {
            None => 10_000,
            Some(v) => v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                PluginError::Invalid(format!(
                    "setting \"thaw_timeout_ms\" = {v:?}: expected milliseconds, a whole number above 0"
                ))
            })?,
        };
        Ok(Script { freeze, thaw, thaw_timeout_ms, frozen: false })
    }

    fn freeze(&mut self, deadline_ms: u32) -> Result<(), PluginError> {
        // Set first: a freeze script that fails half way is thawed too.
        self.frozen = true;
        self.freeze.run("freeze", deadline_ms)
    }

    fn thaw(&mut self) -> Result<(), PluginError> {
        if !std::mem::take(&mut self.frozen) {
            return Ok(());
        }
        match &self.thaw {
            Some(t) => t.run("thaw", self.thaw_timeout_ms),
            None => Ok(()),
        }
    }
}

lifeboat_sdk::export_quiescer!(Script);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kv: &[(&str, &str)]) -> Settings {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_commands_and_refuses_bad_settings() {
        let c = Command::parse("freeze", " /usr/bin/app  --flush  now ").unwrap();
        assert_eq!(c.program, "/usr/bin/app");
        assert_eq!(c.args, ["--flush", "now"]);
        for bad in ["", "   ", "app --flush"] {
            let e = Command::parse("freeze", bad).unwrap_err();
            assert!(matches!(e, PluginError::Invalid(ref m) if m.contains("freeze")), "{e:?}");
        }
        assert!(matches!(Script::init(settings(&[])), Err(PluginError::Invalid(_))));
        let e = Script::init(settings(&[("freeze", "/bin/true"), ("thaw_timeout_ms", "0")]));
        assert!(matches!(e, Err(PluginError::Invalid(ref m)) if m.contains("thaw_timeout_ms")));
        let s =
            Script::init(settings(&[("freeze", "/bin/true"), ("thaw", "/bin/echo x")])).unwrap();
        assert_eq!(s.thaw.unwrap().args, ["x"]);
        assert_eq!(s.thaw_timeout_ms, 10_000);
    }
}
