//! The apps the daemon knows ([`Registry`]): for each, its id, its name, its
//! definition as last known (cached here: `save` and `show` read it, and
//! nothing else holds it while its supervisor is being started again) and
//! the [`Link`] to its supervisor. Ids come from the apps' files and are
//! never reused while a file or a supervisor holds one. Apps with equal
//! environments hold one copy of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use herd_protocol::{AppDef, Response};

use crate::handlers::usage;
use crate::link::Link;

/// One known app.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: u32,
    pub name: String,
    /// The definition, secrets included (answers hide them).
    pub def: Arc<AppDef>,
    pub link: Link,
}

impl Entry {
    /// pm2's namespace (`None`: `default`), a selector for all its apps.
    pub fn namespace(&self) -> Option<&str> {
        self.def.namespace.as_deref()
    }
}

/// The apps, by id.
#[derive(Default)]
pub struct Registry {
    apps: BTreeMap<u32, Entry>,
    next_id: u32,
}

impl Registry {
    /// The apps `selector` names: `all`, a numeric id, a name, or (as in
    /// pm2, when no app has that name) a namespace.
    pub fn resolve(&self, selector: &str) -> Result<Vec<Entry>, Response> {
        if selector == "all" {
            return Ok(self.apps.values().cloned().collect());
        }
        let found = match selector.parse::<u32>() {
            Ok(id) => self.apps.get(&id),
            Err(_) => self.apps.values().find(|e| e.name == selector),
        };
        if found.is_none() {
            let spaced: Vec<Entry> = self
                .apps
                .values()
                .filter(|e| e.namespace() == Some(selector))
                .cloned()
                .collect();
            if !spaced.is_empty() {
                return Ok(spaced);
            }
        }
        found.map(|e| vec![e.clone()]).ok_or_else(|| {
            usage(format!(
                "no app named '{selector}': `herd list` shows the apps and their ids"
            ))
        })
    }

    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        self.apps.values().find(|e| e.name == name)
    }

    pub fn all(&self) -> Vec<Entry> {
        self.apps.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// A new app's id.
    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Take an app (a new one, or one found in the home).
    pub fn insert(&mut self, mut entry: Entry) {
        self.next_id = self.next_id.max(entry.id + 1);
        let mut def = Arc::unwrap_or_clone(entry.def);
        self.share_env(&mut def);
        entry.def = Arc::new(def);
        self.apps.insert(entry.id, entry);
    }

    /// `def` holds the same copy of its environment as an app whose
    /// environment is the same: the apps started from one shell each carry
    /// all of its variables (a few kB), as under pm2.
    fn share_env(&self, def: &mut AppDef) {
        for other in self.apps.values() {
            if def.spec.env.share(&other.def.spec.env) {
                return;
            }
        }
    }

    /// Keep `id` from being given to a new app (its file is there, unread).
    pub fn reserve(&mut self, id: u32) {
        self.next_id = self.next_id.max(id + 1);
    }

    pub fn remove(&mut self, id: u32) {
        self.apps.remove(&id);
    }

    /// The app took a new definition (a reload or restart onto one, a scale).
    pub fn set_def(&mut self, id: u32, mut def: AppDef) {
        self.share_env(&mut def);
        if let Some(e) = self.apps.get_mut(&id) {
            e.def = Arc::new(def);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_engine::config::AppSpec;
    use herd_supervisor::files::AppFiles;

    fn entry(home: &crate::Home, id: u32, env: &[(&str, &str)]) -> Entry {
        let mut spec = AppSpec::new(format!("app{id}"), "/bin/true");
        spec.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let def = AppDef::from(spec);
        let name = def.spec.name.clone();
        Entry {
            id,
            name: name.clone(),
            def: Arc::new(def),
            link: Link::new(id, &name, AppFiles::open(home, id).unwrap()),
        }
    }

    #[test]
    fn apps_started_with_the_same_environment_hold_one_copy_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::Home::open(dir.path().join("h")).unwrap();
        let shell = [("PATH", "/usr/bin"), ("LANG", "C.UTF-8")];
        let mut registry = Registry::default();
        registry.insert(entry(&home, 0, &shell));
        registry.insert(entry(&home, 1, &shell));
        registry.insert(entry(&home, 2, &[("PATH", "/usr/bin"), ("PORT", "1")]));
        let env = |r: &Registry, id: u32| r.apps[&id].def.spec.env.clone();
        assert!(env(&registry, 1).is_shared_with(&env(&registry, 0)));
        assert!(!env(&registry, 2).is_shared_with(&env(&registry, 0)));
        // A new definition with that environment again (a reload onto it).
        let mut changed = (*registry.apps[&2].def).clone();
        changed.spec.env = shell
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        registry.set_def(2, changed);
        assert!(env(&registry, 2).is_shared_with(&env(&registry, 0)));
        assert_eq!(env(&registry, 2).len(), 2);
    }
}
