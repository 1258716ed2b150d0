//! Counting and printing the host's checks.

/// Check results of one scenario.
#[derive(Debug, Default)]
pub struct Checks {
    passed: u32,
    failed: u32,
    first_failure: Option<&'static str>,
}

impl Checks {
    /// No checks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records check `name`, printing `ok`/`FAIL` and `detail`. Returns `ok`.
    pub fn check(
        &mut self,
        name: &'static str,
        ok: bool,
        detail: core::fmt::Arguments<'_>,
    ) -> bool {
        if ok {
            self.passed += 1;
            println!("  ok   {name}: {detail}");
        } else {
            self.failed += 1;
            self.first_failure.get_or_insert(name);
            println!("  FAIL {name}: {detail}");
        }
        ok
    }

    /// Records check `name`: `got == want`.
    pub fn eq(&mut self, name: &'static str, got: u64, want: u64) -> bool {
        self.check(
            name,
            got == want,
            format_args!("got {got:#x}, want {want:#x}"),
        )
    }

    /// Checks that passed.
    pub fn passed(&self) -> u32 {
        self.passed
    }

    /// Checks that failed.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// Name of the first failed check.
    pub fn first_failure(&self) -> Option<&'static str> {
        self.first_failure
    }
}
