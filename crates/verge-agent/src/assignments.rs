//! The agent's durable memory of what it was told to run: one
//! `workloads/<id>/spec.json` per assignment, written atomically, so a
//! restarted agent re-adopts or restarts its workloads without the server.

use std::path::{Path, PathBuf};

use verge_core::{WorkloadId, WorkloadSpec};

const SPEC_FILE: &str = "spec.json";

/// Where assignments live under the data directory.
#[derive(Debug, Clone)]
pub struct Assignments {
    root: PathBuf,
}

impl Assignments {
    /// Assignments under `data_dir/workloads`.
    pub fn new(data_dir: &Path) -> Self {
        Assignments { root: data_dir.join("workloads") }
    }

    /// The directory of one workload (spec, pid file, logs).
    pub fn dir(&self, id: &WorkloadId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// Durably records an assignment, owner-only (its environment may hold
    /// secrets): written to a temporary file, fsynced, then renamed over
    /// the old one.
    pub fn save(&self, spec: &WorkloadSpec) -> std::io::Result<()> {
        let dir = self.dir(&spec.id);
        std::fs::create_dir_all(&dir)?;
        let json = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
        verge_security::fsutil::write_secret(&dir.join(SPEC_FILE), &json)
    }

    /// Forgets an assignment and its files.
    pub fn remove(&self, id: &WorkloadId) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every recorded assignment. Unreadable ones are logged and skipped, so
    /// one bad file never stops the others.
    pub fn load(&self) -> Vec<WorkloadSpec> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut specs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join(SPEC_FILE);
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<WorkloadSpec>(&b).map_err(|e| e.to_string()))
            {
                Ok(spec) => specs.push(spec),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "skipping unreadable assignment"),
            }
        }
        specs.sort_by(|a, b| a.id.cmp(&b.id));
        specs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_survive_and_bad_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let a = Assignments::new(dir.path());
        let spec: WorkloadSpec =
            serde_json::from_value(serde_json::json!({"id": "w1", "requirements": {"cpu": 1, "memory": 1}, "spec": {"command": "true"}}))
                .unwrap();
        a.save(&spec).unwrap();
        std::fs::create_dir_all(dir.path().join("workloads/broken")).unwrap();
        std::fs::write(dir.path().join("workloads/broken/spec.json"), b"{not json").unwrap();
        assert_eq!(a.load(), vec![spec.clone()]);
        a.remove(&spec.id).unwrap();
        a.remove(&spec.id).unwrap();
        assert!(a.load().is_empty());
    }
}
