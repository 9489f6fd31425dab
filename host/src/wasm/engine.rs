//! The one wasmtime [`Engine`] every plugin is compiled with, and the ticker
//! thread that advances its epoch.
//!
//! CPU limits use epoch interruption: each call into a guest sets a deadline
//! of a few epochs ahead (see [`deadline_ticks`]); the ticker increments the
//! epoch every [`EPOCH_TICK`], so a guest that loops is interrupted (a trap)
//! within one tick of its budget. Checking an epoch costs a load and a
//! compare in the guest's loop headers and function entries.

use std::sync::LazyLock;
use std::time::Duration;

use wasmtime::{Config, Engine, OptLevel};

/// How often the epoch advances: the granularity of CPU limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Stack a guest may use before a call traps with "call stack exhausted".
pub const MAX_WASM_STACK: usize = 512 << 10;

static ENGINE: LazyLock<Result<Engine, String>> = LazyLock::new(|| {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(MAX_WASM_STACK);
    let engine = Engine::new(&config).map_err(|e| format!("cannot create the wasm engine: {e}"))?;
    let ticker = engine.clone();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                ticker.increment_epoch();
            }
        })
        .map_err(|e| format!("cannot start the wasm epoch ticker: {e}"))?;
    Ok(engine)
});

/// The process-wide engine (created, with its ticker thread, on first use).
pub fn engine() -> Result<&'static Engine, String> {
    ENGINE.as_ref().map_err(Clone::clone)
}

/// Epochs to allow one call that may use `cpu`: at least `cpu`, at most one tick more.
pub fn deadline_ticks(cpu: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    let n = cpu.as_nanos().div_ceil(tick);
    u64::try_from(n).unwrap_or(u64::MAX / 2).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up_and_add_one() {
        assert_eq!(deadline_ticks(Duration::ZERO), 1);
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(10)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(25)), 4);
        assert!(engine().is_ok());
    }
}
