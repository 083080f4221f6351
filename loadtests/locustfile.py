"""Realistic mixed traffic for the gateway, for locust.

Every simulated client works for one of three applications (model names, so three tasks in
the gateway) and sends chat completions, streamed or not, with prompts of about 60, 600 or
4,000 characters, pausing 50 to 250 ms between requests. An answer fails in locust's figures
when it is not 200, lacks ``x-protege-request-id`` (the id of its record), or is a stream that
does not end with ``data: [DONE]``. Run it headless against a gateway in front of the fake
teacher (``loadtests/fake_upstream.py``); see "Load (locust)" in ``loadtests/README.md``::

    locust -f loadtests/locustfile.py --headless -u 64 -r 16 -t 20s --host http://127.0.0.1:8080
"""

from __future__ import annotations

import json
import random
from typing import Any, Final

from locust import FastHttpUser, between, task

_TEXT: Final = (
    "order invoice refund parcel keyboard cable warranty delivery address account password "
    "billing subscription ticket replacement damaged missing late cancel upgrade plan receipt "
    "customer agent urgent please thanks hello update status tracking number weeks days"
)
_VOCABULARY: Final = tuple(_TEXT.split())
_SYSTEM: Final = {
    "support-triage": "Classify the ticket as billing, bug or account; answer in JSON.",
    "summarize": "Summarize the customer's message in two sentences.",
    "extract": "Extract the order number, the product and the problem as JSON.",
}
# (characters, weight): a short question, a paragraph, a long document
_LENGTHS: Final = ((60, 6), (600, 3), (4000, 1))


def prompt(rng: random.Random) -> tuple[str, str]:
    """A prompt of a drawn length, and its size class for the statistics' names."""
    sizes, weights = zip(*_LENGTHS, strict=True)
    chars = rng.choices(sizes, weights)[0]
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(_VOCABULARY))
    return " ".join(words), {60: "short", 600: "medium", 4000: "long"}[chars]


class GatewayUser(FastHttpUser):  # type: ignore[misc]
    """One application's client: its task is fixed, its requests vary."""

    wait_time = between(0.05, 0.25)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.model = self.rng.choices(list(_SYSTEM), weights=(5, 3, 2))[0]
        self.user_id = f"user-{self.rng.randrange(1000)}"

    def _body(self, stream: bool) -> tuple[dict[str, Any], str]:
        text, size = prompt(self.rng)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": _SYSTEM[self.model]},
                {"role": "user", "content": text},
            ],
            "max_tokens": 256,
            "temperature": 0.2,
            "user": self.user_id,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body, size

    def _send(self, stream: bool) -> None:
        body, size = self._body(stream)
        name = f"{self.model} {'stream' if stream else 'chat'} {size}"
        with self.client.post(
            "/v1/chat/completions",
            data=json.dumps(body),
            headers={"content-type": "application/json", "authorization": "Bearer load"},
            name=name,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif not resp.headers.get("x-protege-request-id"):
                resp.failure("no x-protege-request-id")
            elif stream and not (resp.content or b"").rstrip().endswith(b"data: [DONE]"):
                resp.failure("stream without [DONE]")
            else:
                resp.success()

    @task(6)
    def chat(self) -> None:
        self._send(stream=False)

    @task(4)
    def chat_stream(self) -> None:
        self._send(stream=True)
