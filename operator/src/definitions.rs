//! OpenAPI definitions read from ConfigMaps. The operator watches only the
//! metadata of ConfigMaps (a change is a new resourceVersion), and reads a
//! map's data when a plan needs it at a resourceVersion it has not read:
//! planning a folder does not fetch anything that did not change, and the
//! documents are parsed once per version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, core::PartialObjectMeta, runtime::reflector::ObjectRef, runtime::reflector::Store};

use crate::plan::{Definition, Key};

/// A definition's place in `plan::Definitions`.
type DefinitionKey = (String, String, String);
/// A parsed document, or why it cannot be used.
type Parsed = Arc<Result<Definition, String>>;

/// The data of one ConfigMap at one resourceVersion, parsed per key on use.
struct Read {
    resource_version: String,
    data: HashMap<String, Arc<Result<Definition, String>>>,
    raw: std::collections::BTreeMap<String, String>,
}

/// ConfigMaps read for their definitions, by (namespace, name).
#[derive(Default)]
pub struct DefinitionCache {
    read: Mutex<HashMap<Key, Read>>,
    /// Documents written in ApiDeployments, by definition key: the
    /// generation parsed and the result.
    inline: Mutex<HashMap<DefinitionKey, (Option<i64>, Parsed)>>,
}

impl DefinitionCache {
    /// The parsed document written in an ApiDeployment (`key` from
    /// `plan::definition_key`), parsed once per generation of the object.
    pub fn inline(&self, key: &DefinitionKey, generation: Option<i64>, text: &str) -> Parsed {
        let mut inline = self.inline.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, parsed)) = inline.get(key)
            && *seen == generation
            && generation.is_some()
        {
            return parsed.clone();
        }
        let parsed = Arc::new(Ok(Definition::parse(text)));
        inline.insert(key.clone(), (generation, parsed.clone()));
        parsed
    }

    /// Keeps only the parsed documents of ApiDeployments `live` still says
    /// have one (deleted objects and removed documents are dropped).
    pub fn retain_inline(&self, live: impl Fn(&str, &str) -> bool) {
        let mut inline = self.inline.lock().unwrap_or_else(|e| e.into_inner());
        inline.retain(|(ns, name, _), _| name.strip_prefix("ApiDeployment/").is_some_and(|n| live(ns, n)));
    }

    /// The definition under `key` of ConfigMap `namespace/name`, as the
    /// metadata cache says it is now. `Err` says why it cannot be used.
    pub async fn get(
        &self,
        client: &Client,
        maps: &Store<PartialObjectMeta<ConfigMap>>,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Arc<Result<Definition, String>>, kube::Error> {
        let map_key = (namespace.to_string(), name.to_string());
        let Some(meta) = maps.get(&ObjectRef::new(name).within(namespace)) else {
            self.forget(namespace, name);
            return Ok(Arc::new(Err(format!("ConfigMap {namespace}/{name} not found"))));
        };
        let version = meta.metadata.resource_version.clone().unwrap_or_default();
        if let Some(hit) = self.parsed(&map_key, &version, key) {
            return Ok(hit);
        }
        // Not read at this version: read it (outside the lock).
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let Some(cm) = api.get_opt(name).await? else {
            self.forget(namespace, name);
            return Ok(Arc::new(Err(format!("ConfigMap {namespace}/{name} not found"))));
        };
        let read = Read {
            resource_version: cm.metadata.resource_version.clone().unwrap_or_default(),
            data: HashMap::new(),
            raw: cm.data.unwrap_or_default(),
        };
        let version = read.resource_version.clone();
        self.read.lock().unwrap_or_else(|e| e.into_inner()).insert(map_key.clone(), read);
        Ok(self.parsed(&map_key, &version, key).unwrap_or_else(|| Arc::new(Err("ConfigMap changed while read".into()))))
    }

    /// The parsed definition when the map was read at `version`.
    fn parsed(&self, map_key: &Key, version: &str, key: &str) -> Option<Arc<Result<Definition, String>>> {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let r = read.get_mut(map_key).filter(|r| r.resource_version == version)?;
        if let Some(d) = r.data.get(key) {
            return Some(d.clone());
        }
        let parsed = Arc::new(match r.raw.get(key) {
            Some(text) => Ok(Definition::parse(text)),
            None => Err(format!("ConfigMap {}/{} has no key {key:?}", map_key.0, map_key.1)),
        });
        r.data.insert(key.to_string(), parsed.clone());
        Some(parsed)
    }

    /// Drops what was read of a ConfigMap (it was deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).remove(&(namespace.to_string(), name.to_string()));
    }

    /// ConfigMaps held.
    pub fn len(&self) -> usize {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
