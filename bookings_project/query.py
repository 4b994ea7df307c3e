"""Query-string parameters that are read strictly: a parameter the API documents as one value
is refused (400) when it is sent twice or empty, instead of one of them being silently used
or the filter silently dropped (`?userId=` would otherwise list everything)."""

from __future__ import annotations

import django_filters
from django.http import QueryDict
from rest_framework.exceptions import ValidationError


def single_value(query: QueryDict, name: str) -> str | None:
    """The parameter's one value, None if absent; ValidationError if repeated or empty."""
    values = query.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError({name: "Give this parameter once."})
    if values[0] == "":
        raise ValidationError({name: "Must not be empty; leave the parameter out instead."})
    return values[0]


class StrictFilterSet(django_filters.FilterSet):
    """A FilterSet whose every filter takes one non-empty value (see the module's note)."""

    def is_valid(self) -> bool:
        valid = super().is_valid()
        if isinstance(self.data, QueryDict):
            for name in self.filters:
                try:
                    single_value(self.data, name)
                except ValidationError as error:
                    self.form.add_error(name, error.detail[name])
                    valid = False
        return valid
