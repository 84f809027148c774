//! The OpenAPI 3.0 document of exactly the routes this process serves
//! (after the dialect resolved shared paths), built from the route specs.

use serde_json::{json, Map, Value};

use crate::auth::Auth;
use crate::routes::{BodyDoc, RouteSpec, Ty, F};

fn schema_of(ty: Ty) -> Value {
    match ty {
        Ty::String => json!({ "type": "string" }),
        Ty::Integer => json!({ "type": "integer" }),
        Ty::Boolean => json!({ "type": "boolean" }),
        Ty::Object => json!({ "type": "object" }),
        Ty::Array => json!({ "type": "array", "items": {} }),
        Ty::Binary => json!({ "type": "string", "format": "binary" }),
    }
}

fn object(fields: &[F]) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for F(name, ty, req) in fields {
        let mut schema = schema_of(*ty);
        if !req {
            if let Some(m) = schema.as_object_mut() {
                m.insert("nullable".into(), json!(true));
            }
        }
        props.insert((*name).to_owned(), schema);
        if *req {
            required.push(json!(name));
        }
    }
    let mut obj = json!({ "type": "object", "properties": props });
    if !required.is_empty() {
        obj["required"] = Value::Array(required);
    }
    obj
}

fn error_response(what: &str) -> Value {
    json!({
        "description": what,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    })
}

fn operation(spec: &RouteSpec, key_set: bool) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), json!(spec.summary));
    op.insert("tags".into(), json!([spec.family.name()]));
    let mut params: Vec<Value> = spec
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    for F(name, ty, req) in spec.query {
        params.push(
            json!({ "name": name, "in": "query", "required": req, "schema": schema_of(*ty) }),
        );
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    match spec.body {
        BodyDoc::None => {}
        BodyDoc::Json(fields) => {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": object(fields) } } }),
            );
        }
        BodyDoc::Media(fields) => {
            let schema = object(fields);
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": {
                    "multipart/form-data": { "schema": schema },
                    "application/json": { "schema": schema },
                } }),
            );
        }
    }
    let mut responses = Map::new();
    let ok = if spec.response.is_empty() {
        // Only routes that answer with a file have no JSON shape.
        json!({ "description": "OK: the file, with its content type" })
    } else {
        json!({ "description": "OK", "content": { "application/json": { "schema": object(spec.response) } } })
    };
    responses.insert("200".into(), ok);
    if !matches!(spec.body, BodyDoc::None) || spec.path.contains('{') {
        responses.insert(
            "400".into(),
            error_response("a field is missing or invalid; the message names it"),
        );
    }
    if spec.path.contains("{sessionId}") || !matches!(spec.body, BodyDoc::None) {
        responses.insert("404".into(), error_response("unknown session"));
    }
    let security = match spec.auth {
        Auth::None => None,
        Auth::Header => Some(json!([{ "apiKeyHeader": [] }])),
        Auth::HeaderOrQuery => Some(json!([{ "apiKeyHeader": [] }, { "apiKeyQuery": [] }])),
    };
    if let Some(sec) = security {
        if key_set {
            responses.insert("401".into(), error_response("missing or invalid API key"));
        }
        op.insert("security".into(), sec);
    }
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

/// The document for `routes` (each served path and method once).
pub(crate) fn document(routes: &[&RouteSpec], key_set: bool, dialect: &str) -> Value {
    let mut paths = Map::new();
    for spec in routes {
        let entry = paths
            .entry(spec.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = entry.as_object_mut() {
            m.insert(
                spec.method.as_str().to_ascii_lowercase(),
                operation(spec, key_set),
            );
        }
    }
    paths.insert(
        "/openapi.json".into(),
        json!({ "get": { "summary": "This document", "tags": ["ops"],
            "responses": { "200": { "description": "OpenAPI 3.0 document" } } } }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "wagate-rest",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("REST endpoints of the Node WhatsApp gateways, served on wagate (dialect {dialect})."),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKeyHeader": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
                "apiKeyQuery": { "type": "apiKey", "in": "query", "name": "apiKey" },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": { "success": { "type": "boolean" }, "error": { "type": "string" } },
                    "required": ["success", "error"],
                },
            },
        },
    })
}
