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
