//! Where proptest keeps the seeds of failing cases: never in the source tree.
//!
//! Seeds committed next to a test file (`tests/<name>.proptest-regressions`, proptest's own
//! format) are replayed first, read-only. A new failure is saved under Cargo's target
//! directory, in `target/tmp/proptest-regressions/<package>/<name>.txt`, and replayed from there
//! by later runs in the same target directory; to keep it for everyone, copy its `cc ...` line
//! into the committed file. A failing test run therefore leaves `git status` clean.
//!
//! Included by the proptest files of `pkvm-pgtable` and (through `#[path]`) `pkvm-hyp`:
//! `ProptestConfig { failure_persistence: persistence::out_of_tree(), .. }`.

use std::any::Any;
use std::path::Path;

use proptest::test_runner::{FailurePersistence, FileFailurePersistence, PersistedSeed};

/// The persistence described in the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfTree;

/// [`OutOfTree`], as `ProptestConfig::failure_persistence` wants it.
#[must_use]
pub fn out_of_tree() -> Option<Box<dyn FailurePersistence>> {
    Some(Box::new(OutOfTree))
}

/// Committed seeds: `tests/<name>.proptest-regressions` beside `tests/<name>.rs`.
const COMMITTED: FileFailurePersistence =
    FileFailurePersistence::WithSource("proptest-regressions");

/// The file under the target directory for the test file `source_file`.
fn saved(source_file: Option<&'static str>) -> Option<FileFailurePersistence> {
    let name = Path::new(source_file?).file_stem()?.to_str()?;
    let path = format!(
        "{}/proptest-regressions/{}/{name}.txt",
        env!("CARGO_TARGET_TMPDIR"),
        env!("CARGO_PKG_NAME"),
    );
    // `Direct` wants a `&'static str`: one short path per test that loads or fails.
    Some(FileFailurePersistence::Direct(Box::leak(
        path.into_boxed_str(),
    )))
}

impl FailurePersistence for OutOfTree {
    fn load_persisted_failures2(&self, source_file: Option<&'static str>) -> Vec<PersistedSeed> {
        let mut seeds = COMMITTED.load_persisted_failures2(source_file);
        if let Some(file) = saved(source_file) {
            seeds.extend(file.load_persisted_failures2(None));
        }
        seeds
    }

    fn save_persisted_failure2(
        &mut self,
        source_file: Option<&'static str>,
        seed: PersistedSeed,
        shrunken_value: &dyn std::fmt::Debug,
    ) {
        if let Some(mut file) = saved(source_file) {
            file.save_persisted_failure2(None, seed, shrunken_value);
        }
    }

    fn box_clone(&self) -> Box<dyn FailurePersistence> {
        Box::new(*self)
    }

    fn eq(&self, other: &dyn FailurePersistence) -> bool {
        other.as_any().is::<Self>()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
