"""Objects kubectl >= 1.32 creates in protobuf (`kubectl create sa|cm|secret|role|
rolebinding|clusterrole|clusterrolebinding|deployment`), decoded to their JSON form.

Only the fields those commands send are described (field numbers of the Kubernetes
generated.proto files); other fields are skipped, so defaults apply as for JSON.
"""

from __future__ import annotations

import base64
from typing import Any

from localmesh.sandbox import protowire

# A field type: "str" | "int" | "bool" | "bytes" | a nested message schema, ("rep", type)
# for repeated fields, ("map", value type) for map<string, value>.
FieldType = Any
Schema = dict[int, tuple[str, FieldType]]
INLINE = ""  # a field whose message is embedded into its parent in JSON
KEEP_ZERO = frozenset({"replicas"})

STRINGS: FieldType = ("rep", "str")
OBJECT_META: Schema = {
    1: ("name", "str"),
    2: ("generateName", "str"),
    3: ("namespace", "str"),
    6: ("resourceVersion", "str"),
    11: ("labels", ("map", "str")),
    12: ("annotations", ("map", "str")),
}
LOCAL_REF: Schema = {1: ("name", "str")}
KEY_SELECTOR: Schema = {1: (INLINE, LOCAL_REF), 2: ("key", "str"), 3: ("optional", "bool")}
POLICY_RULE: Schema = {
    1: ("verbs", STRINGS),
    2: ("apiGroups", STRINGS),
    3: ("resources", STRINGS),
    4: ("resourceNames", STRINGS),
    5: ("nonResourceURLs", STRINGS),
}
SUBJECT: Schema = {
    1: ("kind", "str"),
    2: ("apiGroup", "str"),
    3: ("name", "str"),
    4: ("namespace", "str"),
}
ROLE_REF: Schema = {1: ("apiGroup", "str"), 2: ("kind", "str"), 3: ("name", "str")}
CONTAINER: Schema = {
    1: ("name", "str"),
    2: ("image", "str"),
    3: ("command", STRINGS),
    4: ("args", STRINGS),
    5: ("workingDir", "str"),
    6: (
        "ports",
        (
            "rep",
            {
                1: ("name", "str"),
                2: ("hostPort", "int"),
                3: ("containerPort", "int"),
                4: ("protocol", "str"),
            },
        ),
    ),
    7: (
        "env",
        (
            "rep",
            {
                1: ("name", "str"),
                2: ("value", "str"),
                3: (
                    "valueFrom",
                    {
                        1: ("fieldRef", {1: ("apiVersion", "str"), 2: ("fieldPath", "str")}),
                        3: ("configMapKeyRef", KEY_SELECTOR),
                        4: ("secretKeyRef", KEY_SELECTOR),
                    },
                ),
            },
        ),
    ),
    14: ("imagePullPolicy", "str"),
}
POD_SPEC: Schema = {
    2: ("containers", ("rep", CONTAINER)),
    3: ("restartPolicy", "str"),
    4: ("terminationGracePeriodSeconds", "int"),
    8: ("serviceAccountName", "str"),
    21: ("automountServiceAccountToken", "bool"),
}
LABEL_SELECTOR: Schema = {
    1: ("matchLabels", ("map", "str")),
    2: (
        "matchExpressions",
        ("rep", {1: ("key", "str"), 2: ("operator", "str"), 3: ("values", STRINGS)}),
    ),
}

KINDS: dict[str, Schema] = {
    "ServiceAccount": {
        1: ("metadata", OBJECT_META),
        3: ("imagePullSecrets", ("rep", LOCAL_REF)),
        4: ("automountServiceAccountToken", "bool"),
    },
    "ConfigMap": {
        1: ("metadata", OBJECT_META),
        2: ("data", ("map", "str")),
        3: ("binaryData", ("map", "bytes")),
        4: ("immutable", "bool"),
    },
    "Secret": {
        1: ("metadata", OBJECT_META),
        2: ("data", ("map", "bytes")),
        3: ("type", "str"),
        4: ("stringData", ("map", "str")),
        5: ("immutable", "bool"),
    },
    "Role": {1: ("metadata", OBJECT_META), 2: ("rules", ("rep", POLICY_RULE))},
    "ClusterRole": {1: ("metadata", OBJECT_META), 2: ("rules", ("rep", POLICY_RULE))},
    "RoleBinding": {
        1: ("metadata", OBJECT_META),
        2: ("subjects", ("rep", SUBJECT)),
        3: ("roleRef", ROLE_REF),
    },
    "ClusterRoleBinding": {
        1: ("metadata", OBJECT_META),
        2: ("subjects", ("rep", SUBJECT)),
        3: ("roleRef", ROLE_REF),
    },
    "Deployment": {
        1: ("metadata", OBJECT_META),
        2: (
            "spec",
            {
                1: ("replicas", "int"),
                2: ("selector", LABEL_SELECTOR),
                3: ("template", {1: ("metadata", OBJECT_META), 2: ("spec", POD_SPEC)}),
                5: ("minReadySeconds", "int"),
                6: ("revisionHistoryLimit", "int"),
                9: ("progressDeadlineSeconds", "int"),
            },
        ),
    },
}


def _scalar(kind: str, value: int | bytes) -> Any:
    if kind == "int":
        if not isinstance(value, int):
            raise ValueError("expected a varint")
        return value - (1 << 64) if value >= 1 << 63 else value  # int32/int64: two's complement
    if kind == "bool":
        return bool(value)
    if not isinstance(value, bytes):
        raise ValueError("expected a length-delimited field")
    if kind == "str":
        return value.decode()
    if kind == "bytes":
        return base64.b64encode(value).decode()  # JSON carries bytes as base64
    raise ValueError(f"unknown field type {kind}")


def _value(kind: FieldType, value: int | bytes) -> Any:
    if isinstance(kind, dict):
        if not isinstance(value, bytes):
            raise ValueError("expected a message")
        return decode_message(value, kind)
    if isinstance(kind, str):
        return _scalar(kind, value)
    raise ValueError("a repeated or map type inside a value")


def decode_message(data: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, value in protowire.iter_fields(data):
        entry = schema.get(number)
        if entry is None:
            continue  # a field those commands do not send
        name, kind = entry
        if isinstance(kind, tuple) and kind[0] == "rep":
            out.setdefault(name, []).append(_value(kind[1], value))
        elif isinstance(kind, tuple) and kind[0] == "map":
            if not isinstance(value, bytes):
                raise ValueError("expected a map entry")
            pair = dict(protowire.iter_fields(value))
            key = pair.get(1, b"")
            if not isinstance(key, bytes):
                raise ValueError("expected a map key")
            out.setdefault(name, {})[key.decode()] = _value(kind[1], pair.get(2, b""))
        elif name == INLINE:
            out.update(_value(kind, value))
        else:
            decoded = _value(kind, value)
            # Protobuf sends empty scalars that JSON omits (omitempty); replicas is a
            # pointer, so a 0 there is meant.
            if decoded not in ("", 0, False) or name in KEEP_ZERO or isinstance(decoded, dict):
                out[name] = decoded
    return out


def decode_object(body: bytes) -> dict[str, Any]:
    """A runtime.Unknown-wrapped object as JSON; ValueError for kinds not described."""
    if not body.startswith(protowire.MAGIC):
        raise ValueError("not a Kubernetes protobuf body")
    unknown = protowire.fields(body[len(protowire.MAGIC) :])
    type_meta = protowire.fields(unknown.get(1, [b""])[0])
    api_version = type_meta.get(1, [b""])[0].decode()
    kind = type_meta.get(2, [b""])[0].decode()
    schema = KINDS.get(kind)
    if schema is None:
        raise ValueError(f"kind {kind or '?'} is not accepted in protobuf")
    obj = decode_message(unknown.get(2, [b""])[0], schema)
    return {"apiVersion": api_version, "kind": kind, **obj}
