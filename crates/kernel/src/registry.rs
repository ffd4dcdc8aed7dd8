//! In-process service clients. A service that others may ask (links answers
//! routing's lookups) registers a handle here when it runs in the same process;
//! the asking service finds it and skips the network. In scale-out nothing is
//! registered and the asker uses its HTTP client or waits for events.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A map from type to one shared value of that type.
#[derive(Default)]
pub struct Registry {
    items: RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Registry {
    /// Registers `value` (replacing an earlier one of the same type).
    pub fn put<T: Any + Send + Sync>(&self, value: T) {
        if let Ok(mut items) = self.items.write() {
            items.insert(TypeId::of::<T>(), Arc::new(value));
        }
    }

    /// The registered value of type `T`, if any.
    pub fn get<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        let items = self.items.read().ok()?;
        items.get(&TypeId::of::<T>())?.downcast_ref::<T>().cloned()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_type() {
        let r = Registry::default();
        assert_eq!(r.get::<Arc<String>>(), None);
        r.put(Arc::new("links".to_string()));
        assert_eq!(r.get::<Arc<String>>().as_deref().map(String::as_str), Some("links"));
        assert_eq!(r.get::<u32>(), None);
    }
}
