//! The config file's reference, generated from the config types: a JSON Schema of the whole file
//! (`sluice config schema`, for editors) and the key tables of the docs, whose text is the doc
//! comments of the types' fields.
//!
//! Every table is one section, named `app`, `app.wal`, `app.backpressure`, `tables`, `jobs`,
//! `source.<type>` or `sink.<type>`. In the docs a section sits between
//! `<!-- generated: NAME -->` and `<!-- end generated -->`; [`refresh_docs`] rewrites those lines.

use crate::model::FileModel;
use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};
use sluice_core::Registry;
use std::collections::BTreeMap;

/// The config model and every registered connector's options, with their definitions.
struct Schemas {
    /// `$defs`: every named type.
    defs: Map<String, Value>,
    /// The file as written (`sources` and `sinks` still untyped tables).
    file: Value,
    /// Each source type's options, and each sink type's.
    sources: BTreeMap<String, Value>,
    sinks: BTreeMap<String, Value>,
}

impl Schemas {
    fn new(registry: &Registry) -> Schemas {
        let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12());
        let file = generator.subschema_for::<FileModel>().to_value();
        let mut sources = BTreeMap::new();
        for ty in registry.source_types() {
            let factory = registry.source(&ty).expect("a listed type");
            sources.insert(ty, factory.schema(&mut generator).to_value());
        }
        let mut sinks = BTreeMap::new();
        for ty in registry.sink_types() {
            let factory = registry.sink(&ty).expect("a listed type");
            sinks.insert(ty, factory.schema(&mut generator).to_value());
        }
        let mut defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
        let mut file = file;
        tidy(&mut file);
        for v in defs
            .values_mut()
            .chain(sources.values_mut())
            .chain(sinks.values_mut())
        {
            tidy(v);
        }
        let mut s = Schemas {
            defs,
            file,
            sources,
            sinks,
        };
        s.file = s.resolved(&s.file).clone();
        s
    }

    /// `schema`, or the definition it refers to; for an optional value (`anyOf` a type and
    /// null), that type.
    fn resolved<'a>(&'a self, schema: &'a Value) -> &'a Value {
        if let Some(Value::Array(variants)) = schema.get("anyOf") {
            let not_null: Vec<&Value> = variants.iter().filter(|v| v["type"] != "null").collect();
            if let [one] = not_null[..] {
                return self.resolved(one);
            }
        }
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix("#/$defs/")
                .and_then(|name| self.defs.get(name))
                .map(|d| self.resolved(d))
                .unwrap_or(schema),
            None => schema,
        }
    }

    /// A component's options with its `type` key, for the file's schema.
    fn component(&self, ty: &str, kind: &str, options: &Value) -> Value {
        let mut v = self.resolved(options).clone();
        let mut properties = Map::new();
        properties.insert(
            "type".into(),
            json!({ "const": ty, "description": format!("The {kind} type.") }),
        );
        if let Some(Value::Object(p)) = v.get("properties") {
            properties.extend(p.clone());
        }
        v["properties"] = Value::Object(properties);
        let mut required = vec![json!("type")];
        if let Some(Value::Array(r)) = v.get("required") {
            required.extend(r.iter().cloned());
        }
        v["required"] = Value::Array(required);
        v["additionalProperties"] = json!(false);
        v
    }
}

/// Defaults as a user writes them: a `Duration` default serializes as `{ secs, nanos }`; it
/// becomes `"100ms"`.
fn tidy(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(d) = m.get_mut("default") {
                let secs = d.get("secs").and_then(Value::as_u64);
                let nanos = d.get("nanos").and_then(Value::as_u64);
                if let (Some(secs), Some(nanos), Some(2)) =
                    (secs, nanos, d.as_object().map(|o| o.len()))
                {
                    let t = std::time::Duration::new(secs, nanos as u32);
                    *d = Value::String(humantime::format_duration(t).to_string());
                }
            }
            m.values_mut().for_each(tidy);
        }
        Value::Array(a) => a.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// The JSON Schema (draft 2020-12) of a config file: `[app]`, `[tables]`, `[jobs]`, and each
/// `[sources.X]` / `[sinks.X]` checked against the options of its `type`.
pub fn json_schema(registry: &Registry) -> Value {
    let s = Schemas::new(registry);
    let mut file = s.file.clone();
    for (key, kind, types) in [
        ("sources", "source", &s.sources),
        ("sinks", "sink", &s.sinks),
    ] {
        let variants: Vec<Value> = types
            .iter()
            .map(|(ty, options)| s.component(ty, kind, options))
            .collect();
        file["properties"][key] = json!({
            "type": "object",
            "description": format!("The {key}, by name: each a table with a `type` and that type's options."),
            "additionalProperties": { "oneOf": variants },
        });
    }
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sluice pipeline",
        "description": "A sluice config file (TOML or YAML): sources, reference tables, SQL jobs and sinks.",
    });
    if let (Value::Object(r), Value::Object(f)) = (&mut root, file) {
        r.extend(f);
    }
    root["$defs"] = Value::Object(s.defs);
    root
}

/// Every key table, by section name, as Markdown.
pub fn tables(registry: &Registry) -> BTreeMap<String, String> {
    let s = Schemas::new(registry);
    let mut out = BTreeMap::new();
    let property =
        |schema: &Value, key: &str| -> Value { s.resolved(&schema["properties"][key]).clone() };
    let app = property(&s.file, "app");
    out.insert("app".into(), table(&s, &app, &["wal", "backpressure"]));
    for nested in ["wal", "backpressure"] {
        out.insert(
            format!("app.{nested}"),
            table(&s, &property(&app, nested), &[]),
        );
    }
    let items = |key: &str| {
        let map = property(&s.file, key);
        s.resolved(&map["additionalProperties"]).clone()
    };
    out.insert("tables".into(), table(&s, &items("tables"), &[]));
    let jobs = items("jobs");
    out.insert(
        "jobs".into(),
        table(&s, &jobs, &["window", "event_time", "state"]),
    );
    for nested in ["window", "event_time", "state"] {
        out.insert(
            format!("jobs.{nested}"),
            table(&s, &property(&jobs, nested), &[]),
        );
    }
    for (kind, types) in [("source", &s.sources), ("sink", &s.sinks)] {
        for (ty, options) in types {
            out.insert(format!("{kind}.{ty}"), table(&s, s.resolved(options), &[]));
        }
    }
    out
}

/// The key table of one options type: key, type, default and the field's doc comment. Keys in
/// `skip` have tables of their own.
fn table(s: &Schemas, schema: &Value, skip: &[&str]) -> String {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    let Some(Value::Object(properties)) = schema.get("properties") else {
        out.push_str("| (none) | | | this type has no options |\n");
        return out;
    };
    for (key, field) in properties {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let default = if required.contains(&key.as_str()) {
            "required".to_string()
        } else {
            field.get("default").map(show_default).unwrap_or_default()
        };
        let meaning = field
            .get("description")
            .or_else(|| s.resolved(field).get("description"))
            .and_then(Value::as_str)
            .unwrap_or("");
        out.push_str(&format!(
            "| `{key}` | {} | {default} | {} |\n",
            cell(&type_name(s, field)),
            cell(meaning)
        ));
    }
    out
}

/// A short name for a field's type: `string`, `duration`, `"a" \| "b"`, `list of string`, …
fn type_name(s: &Schemas, schema: &Value) -> String {
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        match name {
            "Duration" => return "duration".into(),
            "Size" => return "size".into(),
            "Secret" => return "secret".into(),
            _ => return type_name(s, s.resolved(schema)),
        }
    }
    if let Some(c) = schema.get("const") {
        return c.to_string();
    }
    if let Some(Value::Array(values)) = schema.get("enum") {
        return values
            .iter()
            .filter(|v| !v.is_null())
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(" | ");
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(variants)) = schema.get(key) {
            let mut names: Vec<String> = Vec::new();
            for v in variants {
                let n = type_name(s, v);
                if n != "null" && !names.contains(&n) {
                    names.push(n);
                }
            }
            return names.join(" | ");
        }
    }
    let ty = match schema.get("type") {
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_string(),
        Some(Value::String(t)) => t.clone(),
        _ => return "any".into(),
    };
    match ty.as_str() {
        "array" => format!("list of {}", type_name(s, &schema["items"])),
        "object" => match schema.get("additionalProperties") {
            Some(v @ Value::Object(_)) => format!("table of {}", type_name(s, v)),
            _ => "table".into(),
        },
        other => other.to_string(),
    }
}

fn show_default(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => format!("`\"{s}\"`"),
        Value::Bool(_) | Value::Number(_) => format!("`{v}`"),
        Value::Array(a) if a.is_empty() => "`[]`".into(),
        Value::Object(o) if o.is_empty() => "`{}`".into(),
        _ => String::new(),
    }
}

/// Text fit for a table cell: one line, `|` escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// `text` (a Markdown file) with every generated section replaced by its table from `tables`;
/// an error names a section the file asks for that does not exist.
pub fn refresh_docs(text: &str, tables: &BTreeMap<String, String>) -> Result<String, String> {
    const BEGIN: &str = "<!-- generated: ";
    const END: &str = "<!-- end generated -->";
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(BEGIN) {
        let after = &rest[i + BEGIN.len()..];
        let close = after
            .find("-->")
            .ok_or("a `<!-- generated:` without `-->`")?;
        let name = after[..close].trim();
        let table = tables
            .get(name)
            .ok_or_else(|| format!("no generated section `{name}`"))?;
        let body = &after[close + 3..];
        let end = body
            .find(END)
            .ok_or_else(|| format!("section `{name}` has no `{END}`"))?;
        out.push_str(&rest[..i]);
        out.push_str(&format!("{BEGIN}{name} -->\n{table}{END}"));
        rest = &body[end + END.len()..];
    }
    out.push_str(rest);
    Ok(out)
}
