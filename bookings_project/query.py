"""Query-string parameters read strictly: a parameter the API documents as one value is refused
(400) when it is sent twice, instead of one of the values being silently used. An empty one
is the same as leaving it out, as docs/api.md#query-parameters writes the list's URL (`?status=&flightId=`);
the schema says so (`allowEmptyValue`)."""

from __future__ import annotations

import django_filters
from django.http import QueryDict
from rest_framework.exceptions import ValidationError


def single_value(query: QueryDict, name: str) -> str | None:
    """The parameter's one value, None if absent or empty; ValidationError if repeated."""
    values = query.getlist(name)
    if len(values) > 1:
        raise ValidationError({name: "Give this parameter once."})
    return values[0] if values and values[0] != "" else None


class StrictFilterSet(django_filters.FilterSet):
    """A FilterSet whose every filter takes one value (see the module's note); django-filter
    already reads an empty one as no filter."""

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
