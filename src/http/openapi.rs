//! `GET /api/openapi.json`: the OpenAPI 3 description of every route, written by hand
//! (`openapi.json` beside this file) and served verbatim.

/// The document.
pub const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_valid_json_and_covers_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for r in crate::http::ROUTES {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{} {} is missing from openapi.json",
                r.method,
                r.path
            );
            assert!(
                op["responses"].is_object(),
                "{} {} has no responses",
                r.method,
                r.path
            );
        }
        let paths = doc["paths"].as_object().expect("paths");
        for (path, ops) in paths {
            for method in ops
                .as_object()
                .expect("operations")
                .keys()
                .filter(|k| *k != "parameters")
            {
                assert!(
                    crate::http::ROUTES
                        .iter()
                        .any(|r| r.path == path && r.method.eq_ignore_ascii_case(method)),
                    "openapi.json documents {method} {path}, which is not served"
                );
            }
        }
    }
}
