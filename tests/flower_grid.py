"""Flower's Grid API over direct calls of the ClientApp, in this process (a test double: tests and
benchmarks; the deployment itself is tested in test_deploy.py)."""

from __future__ import annotations

import threading

from flwr.app import Context, Error, Message, RecordDict

from fedgen_pl.flower.client import client_app


class InProcessGrid:
    """Flower's Grid API over direct calls of the ClientApp, every node with its own context, all in this
    process: the ServerApp's logic without SuperLink, SuperNodes or processes (tests, benchmarks,
    debugging). Faults to inject: ``silent`` nodes never reply; a ``slow`` node's reply is held back for
    that many pulls; an exception in the ClientApp becomes an error reply, as in Flower's runtime."""

    def __init__(self, node_configs: dict[int, dict], silent: set[int] = frozenset(), slow: dict | None = None):
        from flwr.supercore.task_identity import TaskIdentity

        try:
            TaskIdentity.run_id
        except RuntimeError:                     # messages need a run id outside Flower's processes
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.contexts = {node: Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})
                         for node, config in node_configs.items()}
        self.silent, self.slow, self.replies, self.sent = set(silent), dict(slow or {}), {}, 0
        self.held: dict[str, int] = {}
        self.log: list[tuple[int, Message]] = []          # every message pushed, with its node

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            self.sent += 1
            node = message.metadata.dst_node_id
            self.log.append((node, message))
            if node in self.silent:
                pass
            elif message.metadata.message_type == "train.run":     # a long-lived task: its own thread
                threading.Thread(target=self._serve, args=(message, node), daemon=True).start()
            else:
                self._serve(message, node)
            ids.append(message.object_id)
        return ids

    def _serve(self, message, node) -> None:
        try:
            reply = client_app(message, self.contexts[node])
        except Exception as err:      # as Flower's runtime does: an exception becomes an error reply
            reply = Message(Error(code=0, reason=repr(err)), reply_to=message)
        self.held[message.object_id] = self.slow.get(node, 0)
        self.replies[message.object_id] = reply

    def pull_messages(self, ids):
        out = []
        for i in list(ids):
            if i in self.replies:
                if self.held[i] > 0:
                    self.held[i] -= 1
                else:
                    out.append(self.replies.pop(i))
        return out
