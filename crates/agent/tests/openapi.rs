//! The OpenAPI document kept in the repository (`docs/openapi.json`, what API users
//! read) is the one the code generates: a change to the API's types or routes that
//! forgets the document fails here.

#[test]
fn the_kept_openapi_document_matches_the_code() {
    let kept = include_str!("../../../docs/openapi.json");
    let generated = shadowcopy_agent::api::openapi_json();
    assert!(
        kept == generated,
        "docs/openapi.json is out of date with the API's code; regenerate it with\n  \
         cargo run -q --bin shadowcopy -- agent openapi > docs/openapi.json\nand review the diff"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/v1/status",
        "/v1/sets",
        "/v1/copies",
        "/v1/copies/{id}",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/events",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    assert!(doc["paths"]["/v1/jobs"]["post"]["requestBody"].is_object());
    // Every schema referenced is defined.
    let text = generated.as_str();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = &reference[..reference.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{name} is referenced but not defined"
        );
    }
}
