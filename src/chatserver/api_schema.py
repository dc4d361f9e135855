"""The OpenAPI description of the HTTP server API (served at
``/api/openapi.json``), built from the same limits the API enforces."""

from __future__ import annotations

from typing import Any

from chatserver import errors
from chatserver.handlers.chat import MAX_ID_LENGTH
from chatserver.http_api import (
    MAX_QUERY_IDS_LENGTH,
    MAX_REASON_LENGTH,
    MAX_TYPE_LENGTH,
    MAX_USERS,
)
from chatserver.wire import MAX_SAFE_INTEGER

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


#: The answers every call may give besides its own.
_COMMON = {
    "400": _error("The request is malformed (invalidRequest, invalidMessage)."),
    "401": _error("No valid API key (authorizationFailed)."),
}
_POSTED = {
    **_COMMON,
    "413": _error("The body is larger than the server's --max-http-body-bytes (tooLarge)."),
    "415": _error("The body is not sent as application/json (invalidRequest)."),
}


def _counted(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": "integer", "minimum": 0, "description": description}},
        "required": [name],
        "additionalProperties": False,
    }


def openapi_description(version: str) -> dict[str, Any]:
    """The OpenAPI 3.0 description of the server API of chatserver ``version``."""
    user_id = {
        "oneOf": [
            {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
            {"type": "integer", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
        ],
        "description": "A user id (an integer is taken as its decimal string).",
    }
    schemas: dict[str, Any] = {
        "UserId": user_id,
        "Users": {"type": "array", "items": _ref("UserId"), "maxItems": MAX_USERS},
        "EventType": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TYPE_LENGTH,
            "description": "The push's `type`, e.g. `notification`.",
        },
        "Data": {
            "description": (
                "Any JSON value within the wire's rules: no number beyond ±(2^53-1), no "
                "lone surrogate, nesting at most 32 deep."
            ),
            "nullable": True,
            "anyOf": [
                {"type": "string"},
                {"type": "number", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
                {"type": "boolean"},
                {"type": "array", "items": _ref("Data")},
                {"type": "object", "additionalProperties": _ref("Data")},
            ],
        },
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string", "enum": list(errors.ERROR_CODES)},
                "message": {"type": "string"},
            },
            "required": ["error", "message"],
        },
        "Message": {
            "type": "object",
            "description": (
                "A stored message as a client's `create` reply carries it: the fields sent, "
                "with `from`, `to` and `createdAt` set by the server and the store's id "
                "(`_id` or `id`)."
            ),
            "properties": {
                "from": {"type": "string"},
                "to": {"type": "string"},
                "createdAt": {"type": "string"},
                "isGroup": {"type": "boolean"},
            },
            "required": ["from", "to", "createdAt"],
        },
    }
    send = {
        "type": "object",
        "properties": {
            "type": _ref("EventType"),
            "data": _ref("Data"),
            "users": _ref("Users"),
        },
        "required": ["type", "users"],
        "additionalProperties": False,
    }
    broadcast = {
        "type": "object",
        "properties": {"type": _ref("EventType"), "data": _ref("Data")},
        "required": ["type"],
        "additionalProperties": False,
    }
    message = {
        "type": "object",
        "properties": {
            "from": _ref("UserId"),
            "to": _ref("UserId"),
            "isGroup": {"type": "boolean"},
            "clientMessageId": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ID_LENGTH,
                "description": "Makes a retry store nothing twice (as for clients).",
            },
        },
        "required": ["from", "to"],
        "additionalProperties": _ref("Data"),
        "description": (
            "Any other field is stored with the message, except those only the server sets "
            "(`_id`, `id`, `createdAt`, `read`, `readBy`), which are dropped."
        ),
    }
    disconnect = {
        "type": "object",
        "properties": {
            "users": _ref("Users"),
            "reason": {
                "type": "string",
                "maxLength": MAX_REASON_LENGTH,
                "description": "The close reason (the Close frame carries its first 123 bytes).",
            },
        },
        "required": ["users"],
        "additionalProperties": False,
    }
    users = {
        "type": "object",
        "properties": {"users": _ref("Users")},
        "required": ["users"],
        "additionalProperties": False,
    }
    presence = {"type": "object", "additionalProperties": {"type": "boolean"}}
    paths = {
        "/api/send": {
            "post": {
                "operationId": "send",
                "summary": "Push an event to users, on every node",
                "requestBody": _body(send),
                "responses": {
                    "200": _ok(
                        "Pushed.",
                        _counted("delivered", "Connections it was written to on this node."),
                    ),
                    **_POSTED,
                },
            }
        },
        "/api/broadcast": {
            "post": {
                "operationId": "broadcast",
                "summary": "Push an event to every signed-in connection, on every node",
                "requestBody": _body(broadcast),
                "responses": {
                    "200": _ok(
                        "Pushed.",
                        _counted("delivered", "Connections it was written to on this node."),
                    ),
                    **_POSTED,
                },
            }
        },
        "/api/messages": {
            "post": {
                "operationId": "createMessage",
                "summary": "Store a message as a user and push it, as that user's create would",
                "requestBody": _body(message),
                "responses": {
                    "200": _ok("The stored message.", _ref("Message")),
                    **_POSTED,
                    "403": _error("`from` is not a member of the group (notGroupMember)."),
                    "409": _error("The clientMessageId was used for another message (conflict)."),
                    "503": _error("Storage failed (storageError)."),
                    "504": _error("Storage did not answer in time (storageTimeout)."),
                },
            }
        },
        "/api/disconnect": {
            "post": {
                "operationId": "disconnect",
                "summary": "End users' sessions on every node (close code 4000)",
                "requestBody": _body(disconnect),
                "responses": {
                    "200": _ok("Ended.", _counted("disconnected", "Sessions ended on this node.")),
                    **_POSTED,
                },
            }
        },
        "/api/presence": {
            "get": {
                "operationId": "presence",
                "summary": "Whether users are connected",
                "parameters": [
                    {
                        "name": "ids",
                        "in": "query",
                        "required": True,
                        "schema": {
                            "type": "string",
                            "maxLength": MAX_QUERY_IDS_LENGTH,
                            "pattern": f"^[^,]{{1,{MAX_ID_LENGTH}}}(,[^,]{{1,{MAX_ID_LENGTH}}})*$",
                        },
                        "description": (
                            f"User ids separated by commas, {MAX_QUERY_IDS_LENGTH} characters "
                            "at most (POST asks about more)."
                        ),
                    }
                ],
                "responses": {"200": _ok("Each id, online or not.", presence), **_COMMON},
            },
            "post": {
                "operationId": "presenceOf",
                "summary": "Whether users are connected (for more ids than a URL holds)",
                "requestBody": _body(users),
                "responses": {"200": _ok("Each id, online or not.", presence), **_POSTED},
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "chatserver server API",
            "version": version,
            "description": (
                "What an application's backend does without a WebSocket: push events, post "
                "messages as a user, end sessions, ask who is online. Every call needs "
                "`Authorization: Bearer <key>` with a key from the server's --api-key-file. "
                'Errors are `{"error": code, "message": words}` with the WebSocket '
                "protocol's codes."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
    }
