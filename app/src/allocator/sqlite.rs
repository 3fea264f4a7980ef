//! SQLite's memory from jemalloc: the bundled SQLite would otherwise allocate its page caches and
//! statements with glibc's malloc, which keeps what a closed connection freed resident in its
//! per-thread arenas (each SQLite connection runs on a worker thread of its own), and which the
//! allocator figures on `/metrics` do not see. Routed here, SQLite's memory follows jemalloc's
//! decay like the rest of the process and is counted in `ddms_allocator_*_bytes`.

use std::os::raw::{c_int, c_void};

use libsqlite3_sys as ffi;

/// SQLite refused the configuration (it was already initialised in this process).
#[derive(Debug, thiserror::Error)]
#[error("SQLite refused its memory allocator (code {0}); it keeps the system's malloc")]
pub struct SqliteMemoryError(c_int);

/// Makes SQLite allocate through jemalloc. Must run before SQLite is first used in the process
/// (`sqlite3_config` is refused afterwards), so `main` calls it first.
pub fn route_sqlite_memory() -> Result<(), SqliteMemoryError> {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to an sqlite3_mem_methods, which SQLite copies
    // before returning; the functions below uphold its contract (8-byte aligned memory, xSize
    // of a live allocation, xRealloc/xFree of SQLite's own pointers).
    let code = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const ffi::sqlite3_mem_methods,
        )
    };
    if code == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(SqliteMemoryError(code))
    }
}

unsafe extern "C" fn x_malloc(size: c_int) -> *mut c_void {
    match usize::try_from(size) {
        // SAFETY: a non-zero size, as jemalloc's malloc requires of callers that want memory.
        Ok(size) if size > 0 => unsafe { tikv_jemalloc_sys::malloc(size) },
        _ => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn x_free(ptr: *mut c_void) {
    // SAFETY: SQLite frees only what x_malloc/x_realloc returned (or null).
    unsafe { tikv_jemalloc_sys::free(ptr) }
}

unsafe extern "C" fn x_realloc(ptr: *mut c_void, size: c_int) -> *mut c_void {
    match usize::try_from(size) {
        // SAFETY: `ptr` is SQLite's own allocation from x_malloc/x_realloc; the size is non-zero.
        Ok(size) if size > 0 => unsafe { tikv_jemalloc_sys::realloc(ptr, size) },
        // SQLite never shrinks to nothing through xRealloc; refusing keeps `ptr` valid.
        _ => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn x_size(ptr: *mut c_void) -> c_int {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: a live allocation of x_malloc/x_realloc.
    let size = unsafe { tikv_jemalloc_sys::malloc_usable_size(ptr) };
    c_int::try_from(size).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(size: c_int) -> c_int {
    match usize::try_from(size) {
        // SAFETY: nallocx only computes a size class; the size is non-zero.
        Ok(n) if n > 0 => {
            c_int::try_from(unsafe { tikv_jemalloc_sys::nallocx(n, 0) }).unwrap_or(size)
        }
        _ => size,
    }
}

unsafe extern "C" fn x_init(_app_data: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_app_data: *mut c_void) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    /// Runs in a child process of the test binary (only this test, so SQLite is not yet
    /// initialised there): routes SQLite's memory, fills a page cache and checks that jemalloc
    /// saw it. Without the routing the test binary's SQLite allocates with glibc and jemalloc's
    /// count stays where it was.
    #[test]
    fn sqlite_allocates_its_page_cache_from_jemalloc() {
        const CHILD: &str = "DDMS_TEST_SQLITE_MEMORY_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "allocator::sqlite::tests::sqlite_allocates_its_page_cache_from_jemalloc",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "the child failed:\n{text}");
            assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
            return;
        }
        route_sqlite_memory().expect("SQLite takes the allocator before its first use");
        let allocated = || {
            tikv_jemalloc_ctl::epoch::advance().unwrap();
            tikv_jemalloc_ctl::stats::allocated::read().unwrap()
        };
        let before = allocated();
        let mut db = std::ptr::null_mut();
        let path = CString::new(":memory:").unwrap();
        // SAFETY: plain use of the SQLite C API on a private in-memory database.
        unsafe {
            assert_eq!(ffi::sqlite3_open(path.as_ptr(), &mut db), ffi::SQLITE_OK);
            let sql = CString::new(
                "CREATE TABLE t (b BLOB); INSERT INTO t VALUES (randomblob(8000000));",
            )
            .unwrap();
            let code = ffi::sqlite3_exec(
                db,
                sql.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            assert_eq!(code, ffi::SQLITE_OK);
        }
        let grown = allocated().saturating_sub(before);
        // SAFETY: the handle opened above, closed once.
        unsafe { ffi::sqlite3_close(db) };
        assert!(
            grown >= 8_000_000,
            "jemalloc saw {grown} bytes of an 8 MB in-memory database"
        );
        // SQLite's Rust-side config is process-wide; a second call after initialisation is
        // refused with a clear error rather than undefined behaviour.
        assert!(route_sqlite_memory().is_err());
    }
}
