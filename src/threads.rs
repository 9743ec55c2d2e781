//! Torch operations inside slade's rayon workers run on one thread each.
//!
//! The workers already occupy every core. A torch operation called from a worker would
//! otherwise start its own OpenMP team (and MKL its threads) in each worker, oversubscribing
//! the cores, and leave those threads spinning while the workers go on with their Rust code.
//! torch does the same inside its own parallel regions (no nested parallelism).
//!
//! The OpenMP thread count is a per-thread setting (`omp_set_num_threads` sets the calling
//! thread's `nthreads-var`), which torch's `at::get_num_threads` and MKL's threading layer
//! read, so setting it in a worker changes nothing for the caller's thread. It is looked up
//! in the OpenMP runtime torch is linked with; where there is none, nothing is done.

use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};
use std::sync::OnceLock;

type SetNumThreads = unsafe extern "C" fn(c_int);

thread_local! {
    static DONE: Cell<bool> = const { Cell::new(false) };
}

/// Makes torch operations on the calling thread single-threaded (once per thread). Call it
/// at the start of work that a rayon worker does with torch.
pub fn single_threaded_torch() {
    if DONE.with(|done| done.replace(true)) {
        return;
    }
    if let Some(set_num_threads) = omp_set_num_threads() {
        // Sound: the OpenMP API's `void omp_set_num_threads(int)`, with a positive count.
        unsafe { set_num_threads(1) };
    }
}

/// `omp_set_num_threads` of the process's OpenMP runtime, if one is loaded.
fn omp_set_num_threads() -> Option<SetNumThreads> {
    static FOUND: OnceLock<Option<usize>> = OnceLock::new();
    let address = *FOUND.get_or_init(|| {
        let name = c"omp_set_num_threads";
        let global = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        let found = if global.is_null() { symbol_of_loaded(c"libgomp.so.1", name) } else { global };
        (!found.is_null()).then_some(found as usize)
    });
    // Sound: the address is that of the C function `omp_set_num_threads`.
    address.map(|a| unsafe { std::mem::transmute::<usize, SetNumThreads>(a) })
}

/// `name` in the library `soname` if that library is already loaded (never loads it).
fn symbol_of_loaded(soname: &CStr, name: &CStr) -> *mut c_void {
    // Sound: RTLD_NOLOAD only returns a handle to a library that is already loaded.
    unsafe {
        let handle = libc::dlopen(soname.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return std::ptr::null_mut();
        }
        let symbol = libc::dlsym(handle, name.as_ptr());
        libc::dlclose(handle);
        symbol
    }
}
