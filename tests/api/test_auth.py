import pytest
from rest_framework.authtoken.models import Token

from tests.helpers import assert_problem

pytestmark = pytest.mark.django_db

URL = "/api/v1/auth/token"


def test_token_for_good_credentials_works_on_the_api(anon_client, user):
    response = anon_client.post(URL, {"username": "alice", "password": "alice-password"}, format="json")

    assert response.status_code == 200
    token = response.json()["token"]
    assert token == Token.objects.get(user=user).key
    anon_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert anon_client.get("/api/v1/flights").status_code == 200


def test_asking_twice_gives_the_same_token(anon_client, user):
    first = anon_client.post(URL, {"username": "alice", "password": "alice-password"}, format="json")
    second = anon_client.post(URL, {"username": "alice", "password": "alice-password"}, format="json")
    assert first.json() == second.json()


@pytest.mark.parametrize(
    "body", [{"username": "alice", "password": "wrong"}, {"username": "nobody", "password": "alice-password"}]
)
def test_bad_credentials_are_401(anon_client, user, body):
    response = anon_client.post(URL, body, format="json")
    assert_problem(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"


def test_inactive_user_gets_no_token(anon_client, user):
    user.is_active = False
    user.save()
    assert_problem(
        anon_client.post(URL, {"username": "alice", "password": "alice-password"}, format="json"),
        401,
        "not_authenticated",
    )


def test_missing_fields_are_400(anon_client):
    body = assert_problem(anon_client.post(URL, {}, format="json"), 400, "validation_error")
    assert {e["field"] for e in body["errors"]} == {"username", "password"}


def test_session_auth_works_for_the_browsable_api_and_swagger(client, user):
    client.force_login(user)
    assert client.get("/api/v1/flights").status_code == 200


def test_session_writes_need_csrf(user, staff_user):
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(staff_user)
    response = client.post("/api/v1/flights", {}, format="json")
    body = assert_problem(response, 403, "permission_denied")
    assert "CSRF" in body["detail"]


# The look-up behind `Authorization: Token` (bookings_project/authentication.py): DRF's
# answers, one statement, nothing cached, and a dropped persistent connection survived.


def test_the_token_look_up_loads_the_whole_user_as_the_orm_does(user):
    from django.contrib.auth import get_user_model

    from bookings_project.authentication import TokenAuthentication

    token = Token.objects.create(user=user)
    found_user, found_token = TokenAuthentication().authenticate_credentials(token.key)

    expected = get_user_model().objects.get(pk=user.pk)
    assert found_user.get_deferred_fields() == set() and found_token.get_deferred_fields() == set()
    for field in expected._meta.concrete_fields:
        assert getattr(found_user, field.attname) == getattr(expected, field.attname), field.name
    assert (found_token.key, found_token.created, found_token.user_id) == (token.key, token.created, user.pk)
    assert found_user.is_active is True and found_user.date_joined.tzinfo is not None
    assert found_token.user is found_user and found_user.auth_token is found_token


def test_a_request_with_a_token_sends_one_statement_for_it(user_client, user, django_assert_num_queries):
    from tests.factories import make_flight

    flight = make_flight()
    with django_assert_num_queries(2):  # The token with its user; the flight.
        assert user_client.get(f"/api/v1/flights/{flight.pk}").status_code == 200


def test_a_deleted_token_or_a_deactivated_user_is_refused_at_once(user_client, user):
    assert user_client.get("/api/v1/flights").status_code == 200
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert_problem(user_client.get("/api/v1/flights"), 401, "not_authenticated")

    user.is_active = True
    user.save(update_fields=["is_active"])
    assert user_client.get("/api/v1/flights").status_code == 200
    Token.objects.filter(user=user).delete()
    body = assert_problem(user_client.get("/api/v1/flights"), 401, "not_authenticated")
    assert body["detail"] == "Invalid token."


def _cut_our_connection() -> None:
    """What a database restart (or an idle-connection timeout) does to a persistent connection."""
    from django.db import connection, connections

    pid = connection.connection.info.backend_pid
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            assert cursor.fetchone() == (True,)
    finally:
        other.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_connection_cut_between_requests_costs_no_token_request(user_client):
    """No health check's SELECT 1 per request (CONN_HEALTH_CHECKS off): the token look-up,
    every API request's first statement and outside a transaction, finds the dead connection
    and is sent once more on a new one."""
    from django.conf import settings
    from django.db import connection

    assert settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] is False
    assert user_client.get("/api/v1/flights").status_code == 200
    before = connection.connection
    _cut_our_connection()

    assert user_client.get("/api/v1/flights").status_code == 200
    assert connection.connection is not before


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_connection_cut_between_requests_costs_other_requests_at_most_one_clean_503(anon_client, user):
    """A request without a token (here the token endpoint itself) meets the dead connection
    at its first statement: 503 problem+json with Retry-After; the end of that request closes
    the broken connection (Django's request_finished, which the test client leaves out, so it
    is sent here), and the next one opens a new connection."""
    from django.db import close_old_connections, connection

    credentials = {"username": "alice", "password": "alice-password"}
    assert anon_client.post(URL, credentials, format="json").status_code == 200
    assert connection.connection is not None
    _cut_our_connection()

    response = anon_client.post(URL, credentials, format="json")
    assert_problem(response, 503, "service_unavailable")
    assert response["Retry-After"] == "5"
    close_old_connections()

    assert anon_client.post(URL, credentials, format="json").status_code == 200


# Revoking a token: DELETE /api/v1/auth/token -------------------------------------------------------


def _token_client(key: str):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_revoking_a_token_ends_it_and_the_next_login_gets_a_new_one(anon_client, user):
    credentials = {"username": "alice", "password": "alice-password"}
    old = anon_client.post(URL, credentials, format="json").json()["token"]
    client = _token_client(old)
    assert client.get("/api/v1/flights").status_code == 200

    response = client.delete(URL)

    assert response.status_code == 204
    assert response.content == b""
    assert not Token.objects.filter(user=user).exists()
    body = assert_problem(client.get("/api/v1/flights"), 401, "not_authenticated")
    assert body["detail"] == "Invalid token."
    assert_problem(client.delete(URL), 401, "not_authenticated")  # Revoked once is revoked.

    new = anon_client.post(URL, credentials, format="json").json()["token"]
    assert new != old
    assert _token_client(new).get("/api/v1/flights").status_code == 200
    assert client.get("/api/v1/flights").status_code == 401


@pytest.mark.parametrize("authorization", [None, "Token not-a-token", "Bearer not-a-token"])
def test_revoking_without_good_credentials_is_401_and_revokes_nothing(anon_client, user, authorization):
    token = Token.objects.create(user=user)
    if authorization:
        anon_client.credentials(HTTP_AUTHORIZATION=authorization)

    response = anon_client.delete(URL)

    assert_problem(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"
    assert Token.objects.filter(pk=token.pk).exists()


def test_a_session_revokes_its_users_token(client, user):
    token = Token.objects.create(user=user)
    client.force_login(user)

    assert client.delete(URL).status_code == 204

    assert not Token.objects.filter(pk=token.pk).exists()
    assert _token_client(token.key).get("/api/v1/flights").status_code == 401
    assert client.delete(URL).status_code == 204  # No token left: nothing to revoke, same answer.


def test_a_session_revocation_needs_its_csrf_token(user):
    from rest_framework.test import APIClient

    token = Token.objects.create(user=user)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)

    body = assert_problem(client.delete(URL), 403, "permission_denied")
    assert "CSRF" in body["detail"]
    assert Token.objects.filter(pk=token.pk).exists()


def test_revoking_one_users_token_leaves_anothers_working(user, other_user):
    alice, bob = Token.objects.create(user=user), Token.objects.create(user=other_user)

    assert _token_client(alice.key).delete(URL).status_code == 204

    assert _token_client(bob.key).get("/api/v1/flights").status_code == 200
    assert Token.objects.filter(pk=bob.pk).exists()


def test_a_stale_token_does_not_stop_a_login(user):
    """POST takes no credentials: a client still sending its revoked token can log in again."""
    stale = _token_client("revoked-long-ago")
    response = stale.post(URL, {"username": "alice", "password": "alice-password"}, format="json")
    assert response.status_code == 200


def test_the_schema_names_both_operations_and_only_the_revocation_needs_a_token(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operations = schema["paths"]["/api/v1/auth/token"]

    assert operations["post"]["operationId"] == "createToken"
    assert operations["post"].get("security", []) == []
    revoke = operations["delete"]
    assert revoke["operationId"] == "revokeToken"
    assert "requestBody" not in revoke
    assert {"tokenAuth": []} in revoke["security"]
    assert "content" not in revoke["responses"]["204"]
    assert "application/problem+json" in revoke["responses"]["401"]["content"]
