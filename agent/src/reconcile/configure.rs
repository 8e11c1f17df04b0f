//! Configuring a booted guest through its agent (network, files, `exec`
//! lines), once per boot and again only for what the lab changes, with the
//! record of what it was given.

use std::fs;
use std::path::Path;
use std::time::Duration;

use labspan_proto::plan::{GuestFile, VmPlan};
use sha2::{Digest, Sha256};

use super::{Agent, AgentError, EXEC_TIMEOUT};
use crate::guest::{network_script, shell_quote};
use crate::vm::{ExecOutput, GuestAgent, QgaError, Vm, VmError};

impl Agent {
    /// Records `vm` as configured for `plan` (it came with its state).
    pub(super) fn arrived_configured(&self, plan: &VmPlan, vm: &Vm) -> Result<(), AgentError> {
        let done = Configured {
            pid: vm.pid(),
            net: digest(&plan.nics),
            run: digest(&plan.config),
        };
        let path = vm.dir().join(CONFIGURED);
        let json = serde_json::to_vec(&done).unwrap_or_default();
        labspan_proto::atomic::write(&path, &json).map_err(|source| AgentError::State {
            what: "writing",
            path,
            cause: source,
        })
    }

    /// The contents of a guest file of the plan, from this host's file store
    /// (the daemon fetched it before applying the plan).
    fn guest_file(&self, lab: &str, vm: &str, file: &GuestFile) -> Result<Vec<u8>, AgentError> {
        match self.files.get(&file.file.sha256) {
            Ok(Some(contents)) => Ok(contents),
            Ok(None) => Err(AgentError::GuestFile {
                lab: lab.to_string(),
                vm: vm.to_string(),
                path: file.path.clone(),
                why: format!("its contents ({}) are not on this host", file.file.sha256),
            }),
            Err(e) => Err(AgentError::GuestFile {
                lab: lab.to_string(),
                vm: vm.to_string(),
                path: file.path.clone(),
                why: e.to_string(),
            }),
        }
    }

    /// Applies what changed since this boot of the VM was last configured:
    /// the network (addresses, names, MTUs: safe to apply again) whenever the
    /// NICs change; files and `exec` lines once per boot, and again only when
    /// the lab changes them, because lab `exec` lines need not be idempotent.
    /// Returns whether anything ran.
    pub(super) async fn configure(
        &self,
        lab: &str,
        plan: &VmPlan,
        vm: &Vm,
    ) -> Result<bool, AgentError> {
        let path = vm.dir().join(CONFIGURED);
        let done: Configured = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|c: &Configured| c.pid == vm.pid())
            .unwrap_or_default();
        let want = Configured {
            pid: vm.pid(),
            net: digest(&plan.nics),
            run: digest(&plan.config),
        };
        if done == want {
            return Ok(false);
        }
        let vm_err = |cause| AgentError::vm(lab.to_string(), cause);
        let mut ga = vm
            .guest_agent(Duration::from_secs(10))
            .await
            .map_err(vm_err)?;
        let mut step = Step {
            ga: &mut ga,
            lab,
            vm: &plan.name,
            log: String::new(),
        };
        let mut result = Ok(());
        if done.net != want.net {
            result = step.run("network setup", &network_script(plan)).await;
        }
        if done.run != want.run {
            for file in &plan.config.files {
                if result.is_err() {
                    break;
                }
                result = match self.guest_file(lab, &plan.name, file) {
                    Ok(contents) => step.write_file(&file.path, &contents).await,
                    Err(e) => Err(e),
                };
            }
            for (i, line) in plan.config.exec.iter().enumerate() {
                if result.is_err() {
                    break;
                }
                result = step
                    .run(&format!("exec line {} `{line}`", i + 1), line)
                    .await;
            }
        }
        let log_path = vm.dir().join("exec.log");
        let mut log = fs::read_to_string(&log_path).unwrap_or_default();
        log.push_str(&step.log);
        labspan_proto::atomic::write(&log_path, log.as_bytes()).map_err(|cause| {
            AgentError::State {
                what: "writing",
                path: log_path,
                cause,
            }
        })?;
        result?;
        let json = serde_json::to_vec(&want).unwrap_or_default();
        labspan_proto::atomic::write(&path, &json).map_err(|cause| AgentError::State {
            what: "writing",
            path,
            cause,
        })?;
        Ok(true)
    }
}

/// One guest's configuration steps, with the log of what they printed.
struct Step<'a> {
    ga: &'a mut GuestAgent,
    lab: &'a str,
    vm: &'a str,
    log: String,
}

impl Step<'_> {
    fn qga_err(&self, cause: QgaError) -> AgentError {
        AgentError::vm(
            self.lab.to_string(),
            VmError::Qga {
                vm: self.vm.to_string(),
                cause,
            },
        )
    }

    /// Runs a shell line; a non-zero exit is an error naming `step`.
    async fn run(&mut self, step: &str, line: &str) -> Result<(), AgentError> {
        let out = self
            .ga
            .exec_shell(line, EXEC_TIMEOUT)
            .await
            .map_err(|e| self.qga_err(e))?;
        self.log.push_str(&exec_log_entry(line, &out));
        if out.exit_code != 0 {
            return Err(AgentError::Config {
                lab: self.lab.to_string(),
                vm: self.vm.to_string(),
                step: step.to_string(),
                code: out.exit_code,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Writes a file, making its folder first.
    async fn write_file(&mut self, path: &str, contents: &[u8]) -> Result<(), AgentError> {
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            let mkdir = format!("mkdir -p {}", shell_quote(&parent.to_string_lossy()));
            self.run(&format!("making the folder of {path}"), &mkdir)
                .await?;
        }
        self.log
            .push_str(&format!("# wrote {path} ({} bytes)\n", contents.len()));
        self.ga
            .write_file(path, contents)
            .await
            .map_err(|e| self.qga_err(e))
    }
}

/// File in a VM's folder recording what this boot of the guest was given.
const CONFIGURED: &str = "configured.json";

/// What a guest was configured with, and on which boot (QEMU pid).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Configured {
    pid: u32,
    /// Digest of the NICs the network script was run for.
    net: String,
    /// Digest of the files and exec lines that were run.
    run: String,
}

fn digest<T: serde::Serialize>(value: &T) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(value).unwrap_or_default(),
    ))
}

fn exec_log_entry(line: &str, out: &ExecOutput) -> String {
    format!(
        "$ {line}\n{}{}[exit {}]\n",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.exit_code
    )
}
