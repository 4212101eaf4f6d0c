//! The committed CRD YAML (crds/ and the chart's crds/) must be exactly what crdgen produces, and every
//! spec field must carry a description (it becomes `kubectl explain` text).

use std::path::Path;

use serde_json::Value;

#[test]
fn committed_crds_match_crdgen_output() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chart_dir = crate_dir.join("../charts/tollgate/crds");
    let mut stale = Vec::new();
    for dir in [crate_dir, chart_dir.as_path()] {
        for (file, crd) in tollgate_crds::crds() {
            let want = tollgate_crds::render_crd(&crd);
            let path = dir.join(file);
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != want {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(stale.is_empty(), "stale CRD files {stale:?}: run `make crds` and commit the result");
}

fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let p = format!("{path}.{k}");
            if v.get("description").and_then(Value::as_str).is_none_or(|d| d.trim().is_empty()) {
                out.push(p.clone());
            }
            undocumented(v, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_spec_field_has_a_description() {
    for (file, crd) in tollgate_crds::crds() {
        let v = serde_json::to_value(&crd.spec.versions[0]).unwrap();
        let root = &v["schema"]["openAPIV3Schema"];
        assert!(
            root["description"].as_str().is_some_and(|d| !d.contains("Auto-generated")),
            "{file}: kind description"
        );
        let mut missing = Vec::new();
        undocumented(&root["properties"]["spec"], "spec", &mut missing);
        undocumented(&root["properties"]["status"], "status", &mut missing);
        assert!(missing.is_empty(), "{file}: fields without description: {missing:?}");
    }
}

#[test]
fn crds_have_names_printer_columns_and_status() {
    let want: &[(&str, &str, &[&str])] = &[
        ("ApiManager", "apim", &["Pattern", "Ready", "Age"]),
        ("ApiDeployment", "apid", &["Context", "Version", "Lifecycle", "Deployed", "Age"]),
        ("ThrottlePolicy", "tp", &["Limit", "Per", "KeyBy", "Scope"]),
        ("KeyManager", "km", &["Issuer", "Manager", "Accepted", "Age"]),
    ];
    for (_, crd) in tollgate_crds::crds() {
        let (_, short, cols) = want.iter().find(|w| w.0 == crd.spec.names.kind).expect("known kind");
        assert_eq!(crd.spec.group, "tollgate.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names.as_deref(), Some(&[short.to_string()][..]));
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["tollgate".to_string()][..]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let names: Vec<&str> =
            version.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(&names, cols);
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
        let status = &schema["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert!(status["observedGeneration"].is_object());
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    }
}
