"""An OpenAI-compatible chat client with retries, for data/make_instructions.py (paper §3.3).

Transport only: POST a system and a user message, get the reply text back, retry what is worth retrying. It is
separate from make_instructions.py, which decides what to ask and what to keep, so either can be read (or
replaced: another API, a local model) alone. Its two errors say what the caller does next: InvalidAnswer drops
one answer (counted), ApiError stops the run. Imports nothing of ours.
"""
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime


class InvalidAnswer(ValueError):
    """An answer we drop and count; `reason` is the short category used in the counts."""
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class ApiError(RuntimeError):
    """The endpoint cannot be used (bad key / URL / model, or still failing after all retries)."""


@dataclass
class ChatClient:
    """POST {api_base}/chat/completions (any OpenAI-compatible server). Retries 429 (waiting what
    Retry-After says), 5xx and network errors with exponential backoff; 401/403/404 stop the run."""
    api_base: str
    api_key: str = ""
    model: str = "gpt-4o-mini"
    temperature: float = 0.7
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 2.0      # seconds before the first retry; doubles each time
    max_wait: float = 300.0   # never sleep longer than this at once
    sleep: Callable[[float], None] = time.sleep  # tests pass a recorder instead of sleeping
    retried: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def complete(self, system: str, user: str) -> str:
        body = json.dumps({"model": self.model, "temperature": self.temperature,
                           "messages": [{"role": "system", "content": system},
                                        {"role": "user", "content": user}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.api_base.rstrip("/") + "/chat/completions"
        for attempt in range(self.retries + 1):
            wait, why = self.backoff * 2 ** attempt * (1 + random.random() / 4), None
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    reply = json.loads(resp.read().decode("utf-8"))
                return reply["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                if e.code in (401, 403, 404):
                    raise ApiError(f"{url} answered HTTP {e.code}: {detail}\ncheck MODAVERSE_API_KEY, "
                                   "--model, and that MODAVERSE_API_BASE ends in /v1 (or its equivalent)")
                if e.code != 429 and e.code < 500:
                    raise InvalidAnswer(f"HTTP {e.code}", detail) from None
                why = f"HTTP {e.code}"
                if e.code == 429:
                    wait = _retry_after(e.headers.get("Retry-After"), wait)
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
                why = f"network: {getattr(e, 'reason', e)}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                raise InvalidAnswer("not a chat completion",
                                    "the endpoint's reply lacks choices[0].message.content") from None
            with self._lock:
                self.retried[why] += 1
            if attempt == self.retries:
                raise ApiError(f"{url}: still failing after {self.retries} retries ({why})")
            self.sleep(min(wait, self.max_wait))
        raise AssertionError("unreachable")


def _retry_after(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header (a number of seconds or an HTTP date)."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return default
