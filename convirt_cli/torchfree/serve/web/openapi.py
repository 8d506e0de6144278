"""GET /api/openapi.json: the API as OpenAPI 3.1, written out (the routes are few; a schema generated from
docstrings would say less). tests/test_serve.py checks that it names every route the app has."""

from __future__ import annotations

from convirt_cli.torchfree.serve.web.params import MAX_K, MAX_OFFSET, MAX_TEXT


def _param(name: str, desc: str, schema: dict, where: str = "query", required: bool = False) -> dict:
    return {"name": name, "in": where, "description": desc, "required": required, "schema": schema}


def _error(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


ERRORS = {"400": _error("a bad parameter or image (one line says which)"),
          "401": _error("the server has a token and the request did not carry it"),
          "403": _error("another Host name or another site's page"),
          "404": _error("no such index, item or route")}
INDEX = _param("index", "which open index (default: the first, see /api/indexes)", {"type": "string"})
ITEM_ID = _param("id", "the item's id (items.jsonl's `id`)", {"type": "integer", "minimum": 0}, "path", True)
SEARCH_PARAMS = [
    _param("q", f"a text query (at most {MAX_TEXT} characters)", {"type": "string"}),
    _param("like", "an item id: more like this item (itself left out of its own index's hits)",
           {"type": "integer", "minimum": 0}),
    _param("from", "the index holding the `like` item (default: `index`): an image finds reports",
           {"type": "string"}),
    INDEX,
    _param("k", "results per page", {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10}),
    _param("offset", "results to skip (the next page: offset + k)",
           {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}),
    _param("where", "keep items whose stored column is one of the values (view=PA,AP) or none of them (sex!=F); "
                    "repeatable", {"type": "array", "items": {"type": "string"}}),
]
SCHEMAS = {
    "Error": {"type": "object", "required": ["error", "status"],
              "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
    "Item": {"type": "object", "required": ["id", "index", "kind", "columns", "url", "thumbnail", "image"],
             "properties": {"id": {"type": "integer"}, "index": {"type": "string"},
                            "kind": {"enum": ["image", "text"]},
                            "columns": {"type": "object", "additionalProperties": {"type": "string"}},
                            "text": {"type": "string", "description": "the report (a text index's items)"},
                            "slice": {"type": "integer"}, "url": {"type": "string"},
                            "thumbnail": {"type": ["string", "null"]}, "image": {"type": ["string", "null"]}}},
    "Hit": {"allOf": [{"$ref": "#/components/schemas/Item"},
                      {"type": "object", "required": ["rank", "score"],
                       "properties": {"rank": {"type": "integer"}, "score": {"type": "number"}}}]},
    "Results": {"type": "object", "required": ["index", "query", "k", "offset", "where", "hits", "more"],
                "properties": {"index": {"type": "string"}, "query": {"type": "object"}, "k": {"type": "integer"},
                               "offset": {"type": "integer"}, "where": {"type": "array", "items": {"type": "string"}},
                               "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                               "more": {"type": "boolean", "description": "a next page has results"}}},
}


def _json(desc: str, ref: str | dict) -> dict:
    schema = {"$ref": f"#/components/schemas/{ref}"} if isinstance(ref, str) else ref
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def _media(kind: str, what: str) -> dict:
    return {"get": {"summary": f"item ID's {kind} ({what}), through the model's window policy",
                    "parameters": [ITEM_ID, INDEX],
                    "responses": {"200": {"description": what, "content": {f"image/{'jpeg' if kind == 'thumbnail' else 'png'}": {}}},
                                  "304": {"description": "unchanged (If-None-Match)"}, **ERRORS}}}


def document() -> dict:
    upload = {"content": {"multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, TIFF or DICOM (8 or 16 bits)"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    search_responses = {"200": _json("hits, best first", "Results"), **ERRORS,
                        "413": _error("over --max-upload-mb"), "415": _error("not a PNG, JPEG, TIFF or DICOM image")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "convirt serve", "version": "1",
                 "description": "Search an archive's images and reports by text, image or item. Send "
                                "`Authorization: Bearer TOKEN` when the server has a token."},
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{"token": []}],
        "paths": {
            "/api/health": {"get": {"summary": "liveness (needs no token)", "security": [],
                                    "responses": {"200": _json("ok", {"type": "object"})}}},
            "/api/indexes": {"get": {"summary": "the open indexes: name, kind, count, model, columns (with their "
                                                "values when few)", "responses": {"200": _json("indexes", {
                                                    "type": "object"}), **ERRORS}}},
            "/api/search": {
                "get": {"summary": "search by text (q) or item (like)", "parameters": SEARCH_PARAMS,
                        "responses": search_responses},
                "post": {"summary": "search by an uploaded image", "parameters": SEARCH_PARAMS[3:],
                         "requestBody": upload, "responses": search_responses}},
            "/api/items/{id}": {"get": {"summary": "one item", "parameters": [ITEM_ID, INDEX],
                                        "responses": {"200": _json("the item", "Item"), **ERRORS}}},
            "/api/items/{id}/thumbnail": _media("thumbnail", "JPEG, at most 256 px"),
            "/api/items/{id}/image": _media("image", "PNG, at most 1024 px"),
            "/api/openapi.json": {"get": {"summary": "this document", "responses": {"200": _json("OpenAPI", {
                "type": "object"})}}},
        },
    }
