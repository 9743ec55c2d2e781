//! Torch operations inside slade's rayon workers run on one thread each.
//!
//! The workers already occupy every core. A torch operation called from a worker would
//! otherwise start its own OpenMP team (and MKL its threads) in each worker, oversubscribing
//! the cores, and leave those threads spinning while the workers go on with their Rust code.
//! torch does the same inside its own parallel regions (no nested parallelism).
//!
//! The OpenMP thread count is a per-thread setting (`omp_set_num_threads` sets the calling
//! thread's `nthreads-var`), which torch's `at::get_num_threads` and MKL's threading layer
//! read, so setting it in a worker changes nothing for the caller's thread; the guard puts
//! the worker's count back when the work is done, so that later torch calls on the worker
//! (k-means, other callers) run as before. It is looked up in the OpenMP runtime torch is
//! linked with; where there is none, nothing is done.

use std::ffi::{c_int, c_void, CStr};
use std::sync::OnceLock;

type SetNumThreads = unsafe extern "C" fn(c_int);
type GetMaxThreads = unsafe extern "C" fn() -> c_int;

/// While alive, torch operations on the creating thread run on one thread; dropping it
/// restores the thread's previous OpenMP count, so nothing outlasts the work it covers.
pub struct SingleThreadedTorch {
    previous: Option<(SetNumThreads, c_int)>,
}

/// Makes torch operations on the calling thread single-threaded until the guard is dropped.
/// Create it at the start of work that a rayon worker does with torch.
pub fn single_threaded_torch() -> SingleThreadedTorch {
    let previous = openmp().map(|(set, get)| {
        // Sound: the OpenMP API's `int omp_get_max_threads(void)` and
        // `void omp_set_num_threads(int)`, with a positive count.
        unsafe {
            let previous = get();
            set(1);
            (set, previous)
        }
    });
    SingleThreadedTorch { previous }
}

impl Drop for SingleThreadedTorch {
    fn drop(&mut self) {
        if let Some((set, previous)) = self.previous {
            // Sound: as above; `previous` is the count the runtime reported.
            unsafe { set(previous.max(1)) };
        }
    }
}

/// `omp_set_num_threads` and `omp_get_max_threads` of the process's OpenMP runtime, if one
/// is loaded.
fn openmp() -> Option<(SetNumThreads, GetMaxThreads)> {
    static FOUND: OnceLock<Option<(usize, usize)>> = OnceLock::new();
    let found = *FOUND
        .get_or_init(|| Some((symbol(c"omp_set_num_threads")?, symbol(c"omp_get_max_threads")?)));
    // Sound: the addresses are those of the two C functions of the OpenMP API.
    found.map(|(set, get)| unsafe {
        (
            std::mem::transmute::<usize, SetNumThreads>(set),
            std::mem::transmute::<usize, GetMaxThreads>(get),
        )
    })
}

/// The address of `name` in the process, or in libgomp if that is loaded but not global.
fn symbol(name: &CStr) -> Option<usize> {
    let global = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    let found = if global.is_null() { symbol_of_loaded(c"libgomp.so.1", name) } else { global };
    (!found.is_null()).then_some(found as usize)
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
