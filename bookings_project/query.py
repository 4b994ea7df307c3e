"""Query-string parameters read strictly: a parameter the API documents as one value is refused
(400) when it is sent twice, instead of one of the values being silently used. An empty one
is the same as leaving it out, as docs/api.md#query-parameters writes the list's URL (`?status=&flightId=`);
the schema says so (`allowEmptyValue`)."""

from __future__ import annotations

import django_filters
from django import forms
from django.http import QueryDict
from django_filters.rest_framework import DjangoFilterBackend
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


class IntegerFilter(django_filters.NumberFilter):
    """Whole numbers only: "1.5" is an error, not flight 1."""

    field_class = forms.IntegerField


class RegexFilter(django_filters.CharFilter):
    """A string that must match `regex` (with `error_messages={"invalid": ...}` to say how)."""

    field_class = forms.RegexField


def refuse_unknown_parameters(query: QueryDict, known: set[str]) -> None:
    """A parameter a list does not know is refused (400), each one named: a typo in a filter
    (`?departureAirpot=DEL`) must never silently answer everything."""
    unknown = sorted(set(query) - known)
    if unknown:
        listed = ", ".join(sorted(known))
        raise ValidationError({name: f"Unknown query parameter; this list takes {listed}." for name in unknown})


def filter_names(view) -> set[str]:
    """The query parameters the view's filter set reads (none if it filters nothing)."""
    filterset = getattr(view, "filterset_class", None)
    if filterset is None or not any(issubclass(b, DjangoFilterBackend) for b in getattr(view, "filter_backends", ())):
        return set()
    return set(filterset.base_filters)
