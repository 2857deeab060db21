//! The panic guard every entry point runs in.

use pyo3::PyResult;
use pyo3::exceptions::PyRuntimeError;

/// Run `f`, turning a Rust panic into `RuntimeError` (PyO3 would raise `PanicException`, a
/// `BaseException` that `except Exception` does not catch). Every entry point runs in one.
pub(super) fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Err(PyRuntimeError::new_err(format!(
            "fastclip internal error: {msg} (a Rust panic; the arrays may be partly modified). Please report it"
        )))
    })
}
