//! The one policy for a poisoned std lock: take the data as it is and carry on.
//!
//! A `std::sync` lock is poisoned when a thread panicked while holding it. Every lock in ddms
//! guards caches, counters, buffers or a status record whose critical sections never leave
//! them broken for the next user (each step is one assignment, insert or push), and the panic
//! itself is already logged. Panicking in turn (`lock().expect(…)`) would only spread one bug
//! to every task that touches the lock, so ddms recovers the guard instead — through these
//! extension traits, so that no call site chooses differently. Tokio's locks do not poison.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`] under ddms's poisoning policy (see the module).
pub trait MutexExt<T: ?Sized> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`] under ddms's poisoning policy (see the module).
pub trait RwLockExt<T: ?Sized> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_still_hands_out_its_data() {
        let mutex = Mutex::new(1);
        let rwlock = RwLock::new(2);
        let _ = std::panic::catch_unwind(|| {
            let _m = mutex.lock().unwrap();
            let _w = rwlock.write().unwrap();
            panic!("poison both");
        });
        assert!(mutex.is_poisoned() && rwlock.is_poisoned());
        *mutex.lock_unpoisoned() += 1;
        *rwlock.write_unpoisoned() += 1;
        assert_eq!(*mutex.lock_unpoisoned(), 2);
        assert_eq!(*rwlock.read_unpoisoned(), 3);
    }
}
