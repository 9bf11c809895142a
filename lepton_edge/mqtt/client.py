"""A paho-mqtt client with exactly one owner: its network-loop thread.

paho's ``Client`` is not safe to drive from several threads (its tracker is full of deadlocks and
interleaved writes), so here one :class:`NetworkLoop` thread does every call into paho: it polls
the sockets (``selectors``, i.e. epoll: no ``select()`` limit on descriptors >= 1024, unlike paho's
own loop), reads, writes, keeps alive, reconnects with backoff and jitter, restores subscriptions on
every connect, and runs message handlers. Other threads hand work over through a queue:
:meth:`MqttClient.publish`, :meth:`MqttClient.subscribe` and :meth:`MqttClient.stop` are safe from
anywhere. Handlers run on the loop thread and must be quick (pass heavy work to another thread).

Given a list of brokers (:class:`BrokerConfig` ``more``) a client connects to the first that answers
and, when it loses the broker or cannot reach it, moves to the next one round robin: within a round
every attempt waits ``min_backoff_s``, and the wait doubles after each round that found no broker. It
stays on a broker that works (no going back to the first). The session settings (client id, clean
start, Last Will, subscriptions, QoS 1 messages not yet acknowledged) go with it to the next broker.

One loop can own many clients (the device simulator runs hundreds in one thread); by default each
client makes and owns its own loop. The TCP connect and TLS handshake of a (re)connection block
the loop for at most ``SessionOptions.connect_timeout_s``.

Device-side code: standard library and paho-mqtt.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from lepton_edge.mqtt.broker import BrokerConfig, SessionOptions, Will, tls_context
from lepton_edge.mqtt.topics import topic_matches

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
MISC_INTERVAL_S = 0.5


def make_paho_client(config: BrokerConfig, client_id: str, *, will: Will | None = None,
                     session: SessionOptions = SessionOptions()) -> Any:
    """A configured ``paho.mqtt.client.Client`` (not connected: :class:`MqttClient`
    drives it). MQTT 5 by default, 3.1.1 by ``config.protocol``; callbacks use API version 2."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    v5 = config.protocol == "5"
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                         clean_session=None if v5 else session.clean_start)
    if config.tls:
        client.tls_set_context(tls_context(config))
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    client.reconnect_delay_set(max(1, int(session.min_backoff_s)), max(1, int(session.max_backoff_s)))
    client.max_inflight_messages_set(session.max_inflight)
    client.max_queued_messages_set(session.max_queued)
    client.connect_timeout = session.connect_timeout_s
    point_paho_client(client, config.at(0), session)
    return client


def point_paho_client(client: Any, broker: BrokerConfig, session: SessionOptions) -> None:
    """Aim a disconnected paho client at ``broker`` (one broker of a list): host, port, credentials."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client.username_pw_set(broker.username, broker.password)
    if broker.protocol == "5":
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if session.session_expiry_s:
            properties.SessionExpiryInterval = session.session_expiry_s
        client.connect_async(broker.host, broker.port, broker.keepalive, clean_start=session.clean_start,
                             properties=properties)
    else:
        client.connect_async(broker.host, broker.port, broker.keepalive)


class TimerHandle:
    """Returned by :meth:`NetworkLoop.call_later`; :meth:`cancel` is safe from any thread."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class NetworkLoop:
    """One thread that owns a set of paho clients, their sockets, timers and handed-over calls."""

    def __init__(self, name: str = "mqtt-loop") -> None:
        self.name = name
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._timers: list[tuple[float, int, TimerHandle, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.clients: list[MqttClient] = []
        self._masks: dict[int, int] = {}      # fd -> the events it is registered for
        self._flush: set[MqttClient] = set()  # clients with bytes queued this round: write before polling
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._stopping = False
        self._closed = False

    # -- from any thread --
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_loop(self) -> bool:
        return threading.get_ident() == self._ident

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._calls.append((fn, args))
        self._wake()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        handle = TimerHandle()
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay), next(self._seq), handle, fn, args))
        self._wake()
        return handle

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (clients should have been stopped first) and release its sockets."""
        def _stop() -> None:
            self._stopping = True
        self.call_soon(_stop)
        if self._thread is not None and not self.in_loop():
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or closed

    # -- loop thread only --
    def watch(self, sock: Any, client: MqttClient) -> None:
        try:
            self._sel.register(sock, selectors.EVENT_READ, client)
        except KeyError:
            self._sel.modify(sock, selectors.EVENT_READ, client)
        self._masks[sock.fileno()] = selectors.EVENT_READ

    def unwatch(self, sock: Any) -> None:
        try:
            self._masks.pop(sock.fileno(), None)
            self._sel.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def want_write(self, sock: Any, client: MqttClient, on: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            fd = sock.fileno()
            if self._masks.get(fd) != events:
                self._sel.modify(sock, events, client)
                self._masks[fd] = events
        except (KeyError, ValueError, OSError):
            pass

    def _run(self) -> None:
        self._ident = threading.get_ident()
        next_misc = time.monotonic() + MISC_INTERVAL_S
        while not self._stopping:
            with self._lock:
                busy = bool(self._calls)
                next_timer = self._timers[0][0] if self._timers else None
            now = time.monotonic()
            timeout = 0.0 if busy else min(MISC_INTERVAL_S, max(0.0, (next_timer or now + 1) - now),
                                           max(0.0, next_misc - now))
            for key, mask in self._sel.select(timeout):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                else:
                    self._guard(key.data._on_events, key.fileobj, mask)
            self._run_calls()
            self._run_timers()
            self._flush_writes()
            if time.monotonic() >= next_misc:
                next_misc = time.monotonic() + MISC_INTERVAL_S
                for client in list(self.clients):
                    self._guard(client._misc)
        self._close()

    def schedule_write(self, client: MqttClient) -> None:
        self._flush.add(client)

    def _flush_writes(self) -> None:
        """Write what the round queued straight away (the socket almost always takes it); only what is
        left waits for the selector to say writable. Saves a poll and two epoll changes per packet."""
        while self._flush:
            clients, self._flush = self._flush, set()
            for client in clients:
                self._guard(client._flush)

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, collections.deque()
        for fn, args in calls:
            self._guard(fn, *args)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                _, _, handle, fn, args = heapq.heappop(self._timers)
            if not handle.cancelled:
                self._guard(fn, *args)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # one bad handler must not stop the devices' network
            log.exception("%s: error in %s", self.name, getattr(fn, "__qualname__", fn))

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


class MqttClient:
    """A connection that keeps itself up: backoff with jitter, failover over a list of brokers,
    subscriptions restored, Last Will.

    ``config`` is the whole list; :attr:`broker` is the broker in use (or being tried).
    ``on_connect()`` and ``on_disconnect(reason)`` run on the loop thread after each change.
    """

    def __init__(self, config: BrokerConfig, client_id: str, *, will: Will | None = None,
                 session: SessionOptions = SessionOptions(), loop: NetworkLoop | None = None,
                 on_connect: Callable[[], None] | None = None,
                 on_disconnect: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.client_id = client_id
        self.session = session
        self._loop = loop or NetworkLoop(f"mqtt-{client_id}")
        self._own_loop = loop is None
        self._user_connect, self._user_disconnect = on_connect, on_disconnect
        self._paho = make_paho_client(config, client_id, will=will, session=session)
        p = self._paho
        p.on_connect, p.on_disconnect, p.on_message = self._on_connect, self._on_disconnect, self._on_message
        p.on_publish, p.on_subscribe = self._on_publish, self._on_subscribe
        p.on_socket_open, p.on_socket_close = self._on_socket_open, self._on_socket_close
        p.on_socket_register_write = self._on_register_write
        p.on_socket_unregister_write = self._on_unregister_write
        self._subs: dict[str, tuple[int, Handler]] = {}
        self._split_filters: dict[str, list[str]] = {}
        self._received = 0  # packets that reached a callback: tells _on_events whether a read made progress
        self._sub_mids: dict[int, list[str]] = {}
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._closing = False
        self._final_mids: set[int] = set()  # the QoS 1 messages of stop(final=...) awaiting PUBACK
        self._disconnect_sent = False
        self._retry: TimerHandle | None = None
        self._connack: TimerHandle | None = None
        self._index = 0       # the broker in use (or being tried) in config's list
        self._attempts = 0    # failed attempts since the last successful connect
        self._last_connected: int | None = None
        self._refused = False
        self._rng = random.Random()
        self._outstanding: set[int] = set()
        self._ack_hooks: dict[int, Callable[[], None]] = {}  # mid -> publish(on_ack=...) awaiting its PUBACK
        self._handover = 0
        self._count_lock = threading.Lock()
        self.last_error: str | None = None
        self.refused_subscriptions: list[str] = []  # filters the broker refused last time (retried)
        self._sub_retries: dict[str, int] = {}
        self.connects = 0
        self.published = 0
        self.dropped = 0

    # -- any thread --
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker(self) -> BrokerConfig:
        """The broker in use, or the one being tried (one entry of :attr:`config`)."""
        return self.config.at(self._index)

    @property
    def loop(self) -> NetworkLoop:
        return self._loop

    def start(self) -> None:
        if self._own_loop:
            self._loop.start()
        self._loop.call_soon(self._attach)

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Remembered and restored on every reconnect; ``handler(topic, payload)`` runs on the loop thread.
        ``qos`` is capped by the broker configuration's ``subscribe_qos``."""
        self._loop.call_soon(self._do_subscribe, topic_filter, handler, min(qos, self.config.subscribe_qos))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                on_ack: Callable[[], None] | None = None) -> None:
        """Queue a message. QoS 1 survives reconnects (kept in memory, up to ``max_queued``).

        ``on_ack()`` runs on the loop thread when the broker acknowledges this message (PUBACK at QoS 1;
        at QoS 0 once paho took it); never for a message dropped."""
        if self._loop.in_loop():
            self._do_publish(topic, payload, qos, retain, on_ack)
            return
        with self._count_lock:
            self._handover += 1
        self._loop.call_soon(self._handover_publish, topic, payload, qos, retain, on_ack)

    def stats(self) -> dict[str, int | bool]:
        """Counts for telemetry: QoS 1 messages awaiting PUBACK (in flight), waiting behind them or in
        the hand-over queue (queued), and messages dropped because the queue was full or we were offline."""
        outstanding = len(self._outstanding)
        inflight = min(outstanding, self.session.max_inflight) if self.session.max_inflight else outstanding
        return {"connected": self.connected, "inflight": inflight,
                "queued": outstanding - inflight + self._handover, "published": self.published,
                "dropped": self.dropped, "connects": self.connects}

    def stop(self, final: tuple[tuple[str, bytes, int, bool], ...] = (), timeout: float = 3.0) -> None:
        """Publish ``final`` messages (e.g. an offline status), disconnect cleanly, release the loop."""
        if not self._loop.running:
            self._closing = True
            self._closed.set()
        elif self._loop.in_loop():
            self._close(final, timeout / 2)
        else:
            self._loop.call_soon(self._close, final, timeout / 2)
            if not self._closed.wait(timeout):
                self._loop.call_soon(self._force_close)
                self._closed.wait(1.0)
        if self._own_loop:
            self._loop.stop()

    # -- loop thread --
    def _attach(self) -> None:
        if self not in self._loop.clients:
            self._loop.clients.append(self)
        self._connect_now()

    def _connect_now(self) -> None:
        self._retry = None
        if self._closing:
            return
        self._refused = False
        try:
            self._paho.reconnect()
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS failure, timeout
            self.last_error = f"cannot connect to {self.broker.display_url}: {_describe(exc)}"
            self._schedule_reconnect()
            return
        self._connack = self._loop.call_later(self.session.connack_timeout_s, self._connack_expired)

    def _connack_expired(self) -> None:
        """A broker that took the TCP connection but never answered CONNECT (e.g. a NATS node whose
        JetStream lost its quorum): give up on it, try the next."""
        self._connack = None
        sock = self._paho.socket()
        if self._closing or self._connected.is_set() or sock is None:
            return
        self.last_error = (f"broker {self.broker.display_url} did not answer CONNECT within "
                           f"{self.session.connack_timeout_s:g} s")
        self._paho._sock_close()  # paho has no public "abandon this attempt"; closing calls _on_socket_close
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._connack is not None:
            self._connack.cancel()
            self._connack = None
        if self._closing or self._retry is not None:
            return
        s, count = self.session, len(self.config.addresses)
        delay = min(s.min_backoff_s * 2 ** (self._attempts // count), s.max_backoff_s)
        self._attempts += 1
        if count > 1:  # the next broker of the list; the paho client is disconnected here
            self._index = (self._index + 1) % count
            point_paho_client(self._paho, self.broker, s)
        self._retry = self._loop.call_later(delay * self._rng.uniform(0.8, 1.2), self._connect_now)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = True
            self.last_error = f"broker {self.broker.display_url} refused the connection: {reason}"
            return  # the broker closes the socket: _on_disconnect schedules the retry
        if self._connack is not None:
            self._connack.cancel()
            self._connack = None
        self.connects += 1
        self._attempts = 0
        self.last_error = None
        if len(self.config.addresses) > 1 and self._last_connected != self._index:
            log.info("%s: connected to %s", self.client_id, self.broker.display_url)
        self._last_connected = self._index
        self._connected.set()
        if self._subs:
            filters = list(self._subs)
            _result, mid = client.subscribe([(f, self._subs[f][0]) for f in filters])
            self._sub_mids[mid] = filters
        if self._user_connect:
            self._user_connect()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._closing:
            self._detach()
            return
        if was_connected:
            self.last_error = f"connection to {self.broker.display_url} lost: {reason}"
            if self._user_disconnect:
                self._user_disconnect(str(reason))
        elif not self._refused:  # e.g. a TLS 1.3 server that wanted a client certificate
            self.last_error = f"broker {self.broker.display_url} closed the connection before accepting it ({reason})"
        self._schedule_reconnect()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._received += 1
        topic = msg.topic
        levels = topic.split("/")
        for topic_filter, (_qos, handler) in list(self._subs.items()):
            if topic_matches(self._filter_levels(topic_filter), levels, topic):
                try:
                    handler(topic, msg.payload)
                except Exception:  # a bad message must not take the connection down
                    log.exception("%s: handler for %s failed", self.client_id, topic)

    def _filter_levels(self, topic_filter: str) -> list[str]:
        levels = self._split_filters.get(topic_filter)
        if levels is None:
            levels = topic_filter.split("/")
            if levels[0] == "$share" and len(levels) > 2:  # $share/<group>/<filter>: messages come on <filter>
                levels = levels[2:]
            self._split_filters[topic_filter] = levels
        return levels

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._received += 1
        self._outstanding.discard(mid)
        hook = self._ack_hooks.pop(mid, None)
        if hook is not None:
            try:
                hook()
            except Exception:  # the owner's bookkeeping must not take the connection down
                log.exception("%s: acknowledgement hook failed", self.client_id)
        if mid in self._final_mids:
            self._final_mids.discard(mid)
            if not self._final_mids:
                self._disconnect()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        filters = self._sub_mids.pop(mid, [])
        for topic_filter, code in zip(filters, reasons, strict=False):
            if not code.is_failure:
                self._sub_retries.pop(topic_filter, None)
                if topic_filter in self.refused_subscriptions:
                    self.refused_subscriptions.remove(topic_filter)
                continue
            if topic_filter not in self.refused_subscriptions:
                self.refused_subscriptions.append(topic_filter)
            self.last_error = f"broker refused the subscription to {topic_filter}: {code}"
            log.warning("%s: %s", self.client_id, self.last_error)
            # Retried with backoff: a refusal may pass (a NATS node refuses while JetStream elects leaders).
            tries = self._sub_retries.get(topic_filter, 0)
            self._sub_retries[topic_filter] = tries + 1
            delay = min(max(1.0, self.session.min_backoff_s) * 2 ** tries, max(1.0, self.session.max_backoff_s))
            self._loop.call_later(delay * self._rng.uniform(0.8, 1.2), self._resubscribe, topic_filter)

    def _resubscribe(self, topic_filter: str) -> None:
        if topic_filter in self._subs and self._connected.is_set() and not self._closing:
            _result, mid = self._paho.subscribe(topic_filter, self._subs[topic_filter][0])
            self._sub_mids[mid] = [topic_filter]

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        try:  # small packets (PUBACKs, block requests) must not wait for Nagle and delayed ACKs
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self._loop.watch(sock, self)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._loop.unwatch(sock)

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._loop.schedule_write(self)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._loop.want_write(sock, self, False)

    def _flush(self) -> None:
        p = self._paho
        sock = p.socket()
        if sock is None:
            return
        p.loop_write()
        if p.socket() is sock and p.want_write():  # the kernel buffer is full: wait until writable
            self._loop.want_write(sock, self, True)

    def _on_events(self, sock: Any, mask: int) -> None:
        p = self._paho
        if p.socket() is not sock:
            return  # closed while handling an earlier event of this round
        if mask & selectors.EVENT_READ:
            # paho reads one packet per call; go on while packets keep coming (bounded, to stay fair)
            for _ in range(64):
                before = self._received
                p.loop_read()
                if p.socket() is not sock or self._received == before:
                    break
            # TLS may hold decrypted bytes the selector cannot see.
            while p.socket() is sock and getattr(sock, "pending", lambda: 0)() > 0:
                p.loop_read()
        if mask & selectors.EVENT_WRITE and p.socket() is sock:
            p.loop_write()

    def _misc(self) -> None:
        if self._paho.socket() is not None:
            self._paho.loop_misc()  # keepalive pings; detects a silent broker

    def _do_subscribe(self, topic_filter: str, handler: Handler, qos: int) -> None:
        self._subs[topic_filter] = (qos, handler)
        if self._connected.is_set():
            _result, mid = self._paho.subscribe(topic_filter, qos)
            self._sub_mids[mid] = [topic_filter]

    def _handover_publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                          on_ack: Callable[[], None] | None) -> None:
        with self._count_lock:
            self._handover -= 1
        self._do_publish(topic, payload, qos, retain, on_ack)

    def _do_publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                    on_ack: Callable[[], None] | None = None) -> None:
        import paho.mqtt.client as paho

        if self._closing:
            self.dropped += 1
            return
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE or (qos == 0 and info.rc != paho.MQTT_ERR_SUCCESS):
            self.dropped += 1
            return
        self.published += 1
        if qos > 0:
            self._outstanding.add(info.mid)
            if on_ack is not None:
                self._ack_hooks[info.mid] = on_ack
        elif on_ack is not None:
            on_ack()

    def _close(self, final: tuple[tuple[str, bytes, int, bool], ...], ack_wait_s: float) -> None:
        """Publish ``final``, wait (at most ``ack_wait_s``) for their PUBACKs, then DISCONNECT.

        Sending DISCONNECT right behind a QoS 1 PUBLISH races the broker's PUBACK: Mosquitto 2.0 (before
        2.0.22, eclipse-mosquitto/mosquitto#3253) fails writing the PUBACK to the closed socket, counts
        the client as lost and publishes its Last Will, so a clean "shutdown" ends as "connection lost".
        """
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self._connected.is_set():
            self._force_close()
            return
        for topic, payload, qos, retain in final:
            info = self._paho.publish(topic, payload, qos=qos, retain=retain)
            if qos > 0:
                self._final_mids.add(info.mid)
        if self._final_mids:
            self._loop.call_later(ack_wait_s, self._disconnect)
        else:
            self._disconnect()

    def _disconnect(self) -> None:
        """DISCONNECT once (after the final PUBACKs, or when waiting for them ran out); _on_disconnect detaches."""
        if self._disconnect_sent:
            return
        self._disconnect_sent = True
        self._final_mids.clear()
        self._paho.disconnect()

    def _force_close(self) -> None:
        sock = self._paho.socket()
        if sock is not None:
            self._loop.unwatch(sock)
            try:
                sock.close()
            except OSError:
                pass
        self._connected.clear()
        self._detach()

    def _detach(self) -> None:
        if self in self._loop.clients:
            self._loop.clients.remove(self)
        self._closed.set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return str(text)
