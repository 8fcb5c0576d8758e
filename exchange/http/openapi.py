"""OpenAPI schema plugins: the document says exactly what the server accepts, so a client
generated from it sends nothing the server refuses as malformed.

Litestar's own Struct plugin leaves out `additionalProperties: false` for Structs that
forbid unknown fields, and knows nothing of DecimalText (schemas.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.plugins import OpenAPISchemaPlugin

from exchange.schemas import DECIMAL_PATTERN, DecimalText

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's Struct schema, plus `additionalProperties: false` where msgspec
    refuses unknown fields (every request body: 400 validation_error)."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


class DecimalTextSchemaPlugin(OpenAPISchemaPlugin):
    """An amount in a request: a decimal string, or a JSON number read exactly."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return field_definition.annotation is DecimalText

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        return Schema(
            one_of=[
                Schema(type=OpenAPIType.STRING, pattern=DECIMAL_PATTERN),
                Schema(type=OpenAPIType.NUMBER),
            ],
            description='A decimal number, preferably as a string ("100.50"); a JSON number is '
            "read exactly, never through a float.",
            examples=["100.50"],
        )


def schema_plugins() -> list[OpenAPISchemaPlugin]:
    return [StrictStructSchemaPlugin(), DecimalTextSchemaPlugin()]
