//! The documentation and the code agree.

use std::collections::BTreeMap;

fn documented_settings() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let section = doc.split("## Settings").nth(1).expect("a Settings section");
    let table = section.split("\n## ").next().unwrap_or(section);
    let mut out = BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // cells[0] is the empty text before the first bar.
        let key = cells[1].trim_matches('`').to_string();
        let default = cells[3].to_string();
        assert!(
            out.insert(key.clone(), default).is_none(),
            "{key} documented twice"
        );
    }
    out
}

#[test]
fn configuration_reference_lists_every_setting_with_its_real_default() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let actual: BTreeMap<String, String> = dbmanager::Config::loader()
        .no_dotenv()
        .env_vars(Vec::<(String, String)>::new())
        .file(empty.path())
        .explain()
        .unwrap()
        .into_iter()
        .map(|s| (s.key, s.value))
        .collect();
    let documented = documented_settings();
    let missing: Vec<_> = actual
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let unknown: Vec<_> = documented
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "settings missing from docs/configuration.md: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents settings the code lacks: {unknown:?}"
    );
    for (key, default) in &actual {
        assert_eq!(
            &documented[key], default,
            "default of `{key}` in docs/configuration.md"
        );
    }
}

#[test]
fn every_documented_variable_is_accepted() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    for key in documented_settings().keys() {
        let var = format!("DBMANAGER_{}", key.to_ascii_uppercase().replace('.', "__"));
        // A value of the wrong type is fine; an unknown key is not.
        let result = dbmanager::Config::loader()
            .no_dotenv()
            .env_vars([(var.clone(), "1".to_string())])
            .file(empty.path())
            .load();
        if let Err(err) = result {
            assert!(
                !err.to_string().contains("not a known setting"),
                "{var}: {err}"
            );
        }
    }
}
