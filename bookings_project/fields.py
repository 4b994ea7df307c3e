"""Serializer fields that accept exactly what the OpenAPI schema says, and nothing else.

DRF's stock fields are lenient (`"3"` for an integer, `"yes"` for a boolean, `12` for a
string), so a request the schema calls invalid would be accepted. These keep the
schema and the behaviour the same.
"""

import re
from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

MONEY_STRING = re.compile(r"[0-9]{1,8}(\.[0-9]{1,2})?")
MONEY_MAX = Decimal("99999999.99")


class _StringOnly:
    """Refuse non-strings: DRF's string fields would take `12` and make it `"12"`."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(_StringOnly, serializers.CharField):
    pass


class StrictRegexField(_StringOnly, serializers.RegexField):
    pass


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: not a string, not a boolean, not a fraction."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        if isinstance(data, float) and not data.is_integer():
            self.fail("invalid")
        return super().to_internal_value(int(data))


@extend_schema_field(
    {
        "oneOf": [
            {"type": "boolean"},
            {"type": "integer", "enum": [0, 1]},
            {"type": "string", "enum": ["true", "false"]},
        ]
    }
)
class SeedBooleanField(serializers.BooleanField):
    """A boolean as the seed understood it: true/false, 0/1, "true"/"false"."""

    # 1 == True and 0 == False in Python, so the integers 0 and 1 find their entries too.
    ACCEPTED = {True: True, False: False, "true": True, "false": False}

    def to_internal_value(self, data):
        if isinstance(data, (bool, int, str)) and data in self.ACCEPTED:
            return self.ACCEPTED[data]
        self.fail("invalid", input=data)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "number", "minimum": 0, "maximum": float(MONEY_MAX), "multipleOf": 0.01},
            {"type": "string", "pattern": rf"^{MONEY_STRING.pattern}$"},
        ],
        "example": "11000.00",
    }
)
class MoneyField(serializers.DecimalField):
    """An amount: a JSON number or a decimal string, at most two places, never negative."""

    def __init__(self, **kwargs):
        super().__init__(max_digits=10, decimal_places=2, min_value=Decimal("0"), max_value=MONEY_MAX, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float, str)):
            self.fail("invalid")
        if isinstance(data, str) and not MONEY_STRING.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


def resolve_alias(attrs: dict, name: str, alias: str) -> dict:
    """Take a field given under its name or under its older alias (docs/api.md#conventions): one of the
    two is required, and when both are given they must agree."""
    value, alias_value = attrs.get(name), attrs.pop(alias, None)
    if value is None and alias_value is None:
        raise serializers.ValidationError({name: "This field is required."})
    if value is not None and alias_value is not None and value != alias_value:
        raise serializers.ValidationError({alias: f"Must equal {name} when both are given."})
    attrs[name] = value if value is not None else alias_value
    return attrs


class CachedFieldsSerializer(serializers.ModelSerializer):
    """A read-only answer on a hot path, its fields built once per class instead of per answer.

    DRF builds a ModelSerializer's fields from the model, and deep-copies its declared ones,
    for every instance it serializes: on `POST /bookings` that cost more than the booking's
    own SQL. The fields of an answer depend on nothing but the class (no request, no
    context), so one bound set serves every instance; `to_representation` is DRF's own.
    """

    @property
    def _readable_fields(self):
        cls = type(self)
        fields = cls.__dict__.get("_cached_readable_fields")
        if fields is None:
            # Bound to a prototype without context; two threads racing here build equal lists.
            fields = list(serializers.ModelSerializer._readable_fields.fget(cls()))
            cls._cached_readable_fields = fields
        return fields
