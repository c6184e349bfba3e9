//! Versions side by side: a candidate installed beside the current version
//! and switched to only after it passed its health check
//! ([`Store::promote`]), and the replaced versions a record keeps so that a
//! [`Store::rollback`] needs no download.
//!
//! Each switch is one rename of `functions/<name>.json` (see
//! [`super::write_atomic`]), so a crash leaves the old record or the new
//! one, and both name whole objects: objects are collected only after no
//! record, kept version or candidate names them.

use super::{crash_point, io_err, is_valid_name, succeed, sync_dir, InstallPolicy, Installed, InstalledFunction, Publication, Store, StoreError};

impl Store {
    /// The candidate record of `name`, if one is staged.
    pub fn candidate(&self, name: &str) -> Result<Option<Installed>, StoreError> {
        if !is_valid_name(name) {
            return Err(StoreError::InvalidName(limes_bundle::untrusted(name)));
        }
        let rel = format!("candidates/{name}.json");
        let Some(b) = self.read_file(&rel, 1 << 20)? else { return Ok(None) };
        serde_json::from_slice(&b).map(Some).map_err(|e| StoreError::Corrupted { name: name.into(), detail: format!("{}: {e}", self.root.join(rel).display()) })
    }

    /// Every candidate record (a directory missing in an older store: none).
    pub fn candidates(&self) -> Result<Vec<Installed>, StoreError> {
        let d = self.root.join("candidates");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if let Some(stem) = n.strip_suffix(".json").filter(|s| is_valid_name(s)) {
                if let Some(r) = self.candidate(stem)? {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Verify `bundle` and publish it as its function's candidate, beside
    /// the current version (the policy's checks apply as for an install).
    pub fn install_candidate(
        &self,
        bundle: &std::path::Path,
        keys: &limes_bundle::TrustedKeys,
        policy: InstallPolicy,
    ) -> Result<InstalledFunction, StoreError> {
        let (staging, v) = self.stage(bundle, keys, &limes_bundle::archive::BundleLimits::default())?;
        let signer = v.signer.map(|k| k.to_string()).unwrap_or_default();
        self.publish(staging, Publication { manifest: &v.manifest, manifest_bytes: &v.manifest_bytes, signer, files: Vec::new(), policy, candidate: true })
    }

    /// Load the candidate of `name` as [`Store::load`] loads a function:
    /// the same checks, against the same anchors.
    pub fn load_candidate(&self, name: &str, anchors: &crate::trust::Anchors) -> Result<InstalledFunction, StoreError> {
        let record = self.candidate(name)?.ok_or_else(|| StoreError::NoCandidate { name: name.into() })?;
        self.load_record(record, anchors)
    }

    /// Switch `name` to its candidate, which must still be `object` (a
    /// candidate replaced meanwhile was not the one checked): the current
    /// version becomes the first kept one, the publisher pin follows, and
    /// the candidate record goes.
    pub fn promote(&self, name: &str, object: &str, keep: usize) -> Result<InstalledFunction, StoreError> {
        let _guard = self.lock()?;
        let cand = self.candidate(name)?.filter(|c| c.object == object).ok_or_else(|| StoreError::NoCandidate { name: name.into() })?;
        let signer = cand.signer.clone();
        let record = succeed(self.record(name)?, cand, keep);
        self.write_file(&format!("functions/{name}.json"), &serde_json::to_vec_pretty(&record).expect("record serializes"))?;
        crash_point("promoted");
        let pin_rel = format!("pins/{name}");
        let pinned = self.read_file(&pin_rel, 64)?.map(|b| String::from_utf8_lossy(&b).trim().to_string());
        if pinned.as_deref() != Some(signer.as_str()) {
            self.write_file(&pin_rel, format!("{signer}\n").as_bytes())?;
        }
        self.remove_candidate_locked(name)?;
        self.gc_locked()?;
        self.get(name)
    }

    /// Drop the candidate of `name` (it failed its check, or a killed
    /// agent left it); its object is collected unless something else
    /// names it.
    pub fn discard_candidate(&self, name: &str) -> Result<Option<Installed>, StoreError> {
        let _guard = self.lock()?;
        let cand = self.candidate(name)?;
        if cand.is_some() {
            self.remove_candidate_locked(name)?;
            self.gc_locked()?;
        }
        Ok(cand)
    }

    fn remove_candidate_locked(&self, name: &str) -> Result<(), StoreError> {
        let p = self.root.join("candidates").join(format!("{name}.json"));
        match std::fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.root.join("candidates")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Return `name` to the newest kept version. The version left is not
    /// kept (it is the one found bad); returns (left, now current).
    pub fn rollback(&self, name: &str) -> Result<(Installed, Installed), StoreError> {
        let _guard = self.lock()?;
        self.recover_locked();
        let mut cur = self.record(name)?.ok_or_else(|| self.not_installed(name))?;
        if cur.previous.is_empty() {
            return Err(StoreError::NoPrevious { name: name.into(), version: cur.version });
        }
        let mut back = cur.previous.remove(0);
        back.previous = std::mem::take(&mut cur.previous);
        self.write_file(&format!("functions/{name}.json"), &serde_json::to_vec_pretty(&back).expect("record serializes"))?;
        crash_point("rolled-back");
        self.gc_locked()?;
        Ok((cur, back))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{succeed, Installed};

    fn rec(object: &str) -> Installed {
        Installed {
            name: "f".into(),
            version: object.into(),
            object: object.into(),
            signer: String::new(),
            files: vec![],
            manifest_sha256: object.into(),
            stamps: Default::default(),
            previous: vec![],
        }
    }

    fn objects(r: &Installed) -> Vec<&str> {
        std::iter::once(r.object.as_str()).chain(r.previous.iter().map(|p| p.object.as_str())).collect()
    }

    #[test]
    fn a_new_version_keeps_the_replaced_ones_newest_first_up_to_keep() {
        let mut r = succeed(None, rec("a"), 2);
        assert_eq!(objects(&r), ["a"]);
        for (o, want) in [("b", vec!["b", "a"]), ("c", vec!["c", "b", "a"]), ("d", vec!["d", "c", "b"])] {
            r = succeed(Some(r), rec(o), 2);
            assert_eq!(objects(&r), want);
            assert!(r.previous.iter().all(|p| p.previous.is_empty()), "kept versions keep no chain of their own");
        }
        // Reinstalling a kept version moves it to the front, not twice.
        r = succeed(Some(r), rec("c"), 2);
        assert_eq!(objects(&r), ["c", "d", "b"]);
        // The same object again changes nothing.
        r = succeed(Some(r), rec("c"), 2);
        assert_eq!(objects(&r), ["c", "d", "b"]);
        // keep 0: nothing kept.
        assert_eq!(objects(&succeed(Some(r), rec("e"), 0)), ["e"]);
    }
}
