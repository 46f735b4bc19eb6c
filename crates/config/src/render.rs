//! Renders a configuration as TOML with a comment above every key.
//!
//! The comments are the doc comments of the config structs, taken from their
//! JSON schema (schemars), so the printed documentation cannot drift from the
//! code. A test checks that every key of the default config has one.

use serde_json::Value as Json;
use toml::Value as Toml;

use crate::Config;

/// Width at which comment lines are wrapped.
const WRAP: usize = 92;

/// The configuration as commented TOML, ready to save and edit.
pub fn commented_toml(config: &Config) -> String {
    let schema = schemars::schema_for!(Config);
    let root = schema.as_value();
    let value = Toml::try_from(config).expect("the config types serialize to TOML");
    let table = value.as_table().expect("the config is a table");

    let mut out = String::new();
    out.push_str("# scalestack configuration. Every key is optional: a missing key takes the\n");
    out.push_str("# value shown here, which is the embedded one-machine stack.\n");
    write_table(&mut out, &[], table, root, root);
    out
}

fn write_table(out: &mut String, path: &[String], table: &toml::Table, schema: &Json, root: &Json) {
    let schema = resolve(schema, root);
    let is_subtable = |v: &Toml| v.is_table() || is_array_of_tables(v);

    for (key, value) in table.iter().filter(|(_, v)| !is_subtable(v)) {
        out.push('\n');
        write_comment(out, property_doc(schema, key, root).as_deref());
        out.push_str(&format!("{key} = {}\n", inline(value)));
    }
    for (key, value) in table.iter().filter(|(_, v)| is_subtable(v)) {
        let prop = property(schema, key);
        let mut child_path = path.to_vec();
        child_path.push(key.clone());
        let dotted = child_path.join(".");
        out.push('\n');
        write_comment(out, property_doc(schema, key, root).as_deref());
        match value {
            Toml::Table(child) => {
                out.push_str(&format!("[{dotted}]\n"));
                write_table(out, &child_path, child, prop.unwrap_or(&Json::Null), root);
            }
            Toml::Array(items) => {
                let item_schema = prop
                    .map(|p| resolve(p, root))
                    .and_then(|p| p.get("items"))
                    .unwrap_or(&Json::Null);
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push('\n');
                    }
                    out.push_str(&format!("[[{dotted}]]\n"));
                    let item = item.as_table().expect("checked by is_array_of_tables");
                    write_table(out, &child_path, item, item_schema, root);
                }
            }
            _ => unreachable!("filtered to tables and arrays of tables"),
        }
    }
}

fn is_array_of_tables(value: &Toml) -> bool {
    matches!(value, Toml::Array(items) if !items.is_empty() && items.iter().all(Toml::is_table))
}

/// A TOML value written inline (right of `=`).
fn inline(value: &Toml) -> String {
    value.to_string()
}

/// Follows a `$ref` to `#/$defs/...`; other schemas are returned unchanged.
fn resolve<'a>(schema: &'a Json, root: &'a Json) -> &'a Json {
    let Some(reference) = schema.get("$ref").and_then(Json::as_str) else {
        return schema;
    };
    let Some(name) = reference.strip_prefix("#/$defs/") else {
        return schema;
    };
    root.get("$defs")
        .and_then(|d| d.get(name))
        .unwrap_or(schema)
}

fn property<'a>(schema: &'a Json, key: &str) -> Option<&'a Json> {
    schema.get("properties")?.get(key)
}

/// The doc of a property: its own description, else the description of its type.
fn property_doc(schema: &Json, key: &str, root: &Json) -> Option<String> {
    let prop = property(schema, key)?;
    let own = prop.get("description").and_then(Json::as_str);
    let of_type = resolve(prop, root)
        .get("description")
        .and_then(Json::as_str);
    own.or(of_type).map(str::to_owned)
}

fn write_comment(out: &mut String, doc: Option<&str>) {
    let Some(doc) = doc else { return };
    for (i, paragraph) in doc.split("\n\n").enumerate() {
        if i > 0 {
            out.push_str("#\n");
        }
        let mut line = String::from("#");
        for word in paragraph.split_whitespace() {
            if line.len() + 1 + word.len() > WRAP && line.len() > 1 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_default_parses_back_to_the_default() {
        let text = commented_toml(&Config::default());
        let parsed = Config::from_toml_str(&text, "rendered").unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn every_key_and_table_has_a_comment() {
        let text = commented_toml(&Config::default());
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let is_key = !line.starts_with('#') && !line.is_empty();
            // Later items of an array of tables share the first item's comment.
            let later_array_item = line.starts_with("[[") && i > 0 && lines[i - 1].is_empty();
            if !is_key || later_array_item {
                continue;
            }
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "no comment above line {}: {line}\n{text}",
                i + 1
            );
        }
    }

    #[test]
    fn comments_come_from_doc_comments() {
        let text = commented_toml(&Config::default());
        assert!(
            text.contains("# Number of api processes `scalestack up` starts.\ninstances = 2\n"),
            "{text}"
        );
        assert!(text.contains("[[store.shards]]\n"), "{text}");
        assert!(text.contains("ttl = \"15m\""), "{text}");
    }
}
