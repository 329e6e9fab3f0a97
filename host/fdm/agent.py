"""vSphere HA's agent on one host (FDM), as a sans-I/O core: the master election,
the heartbeat timeline, and the verdicts a master reaches about its slaves.

The shell feeds it what happens (`heard` an agent's message, `ping_answered`,
`datastore_heartbeat` as read from a slave's files) and calls `tick` at least once a
heartbeat interval; each call returns the actions to carry out (send a message, ping
an address, read a host's datastore heartbeat, apply the isolation response). Time is
whatever the shell's clock says, passed in: the core reads no clock, draws no random
number and does no I/O.

The rules, with vSphere's numbers (FdmSettings):
- Election: an agent with no master broadcasts ballots for 15 s; the winner is the
  agent seeing the most datastores, ties to the lexically highest host id. An agent
  that hears a master during its election joins it. Two masters that hear each other
  (a partition healed) merge: the lesser abdicates and follows the greater.
- Heartbeats every 1 s between the master and each slave (the master's go to every
  host of the cluster, so that electing and isolated agents find it). A slave whose
  master is silent for 10 s holds an election; alone, it elects itself at 25 s.
- A new master watches every host of the cluster, heard or not, from the moment it
  is elected: a host that died while there was no master is found like any other.
- A master pings a slave silent for 10 s. With no heartbeat datastores, the slave is
  dead at 15 s unless it answered (then partitioned). With them, the master reads the
  slave's datastore heartbeat at 15 s and decides at 18 s: stopped and no answer is
  dead; still beating is isolated (the slave's poweron file says so) or partitioned.
  A slave judged partitioned or isolated is checked again the same way, as if just
  pinged (pinged at once, decided 5 s or 8 s later), so that its isolation, once its
  poweron file says so, or its death is found.
- A master that hears no agent for 5 s pings the isolation address: no answer, and
  it is isolated (for a slave that lost its master: 25 + 5 = 30 s); an answer, and
  it checks again after another 5 s of silence. The isolation response is applied
  when it is isolated. An isolated agent pings the isolation address every interval;
  when it answers, or when the agent hears another again, it rejoins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MASTER = "master"
SLAVE = "connectedToMaster"
ELECTION = "election"
ISOLATED = "networkIsolated"
# A master's verdicts on its slaves (vSphere's ClusterDasFdmHostState names).
DEAD = "hostDown"
PARTITIONED = "networkPartitionedFromMaster"
_UNHEARD = "unheard"
"""A host a new master has not heard from yet (not shown in `verdicts`)."""


@dataclass(frozen=True)
class FdmSettings:
    heartbeat_interval_s: float = 1.0
    """Network heartbeats between the master and each slave, and election ballots."""
    election_s: float = 15.0
    """How long an election gathers ballots before its winner is known."""
    slave_ping_after_s: float = 10.0
    """A slave silent this long is pinged."""
    slave_dead_after_s: float = 15.0
    """A silent slave's verdict without heartbeat datastores; with them, when its
    datastore heartbeat is read."""
    slave_dead_with_datastores_s: float = 18.0
    """A silent slave's verdict with heartbeat datastores."""
    master_lost_after_s: float = 10.0
    """A slave whose master is silent this long holds an election."""
    isolation_after_s: float = 5.0
    """A master that hears no agent this long checks whether it is isolated."""


@dataclass(frozen=True)
class Message:
    """An agent's heartbeat or ballot, sent over the management network."""

    sender: str
    role: str
    datastores: int
    master: str = ""
    """The master it follows (a slave), itself (a master), "" (electing)."""


@dataclass(frozen=True)
class Send:
    to: str
    message: Message


@dataclass(frozen=True)
class Ping:
    address: str
    """A host's id (its management address) or the isolation address."""


@dataclass(frozen=True)
class ReadDatastoreHeartbeat:
    host: str


@dataclass(frozen=True)
class Verdict:
    host: str
    state: str


@dataclass(frozen=True)
class ApplyIsolationResponse:
    pass


@dataclass(frozen=True)
class RoleChanged:
    role: str
    master: str


Action = Send | Ping | ReadDatastoreHeartbeat | Verdict | ApplyIsolationResponse | RoleChanged


@dataclass
class _Slave:
    silent_since: float
    """When the master last heard it (or began watching it, or began a new check)."""
    verdict: str = SLAVE
    pinged: bool = False
    answered: bool = False
    read_datastore: bool = False
    datastore_live: bool | None = None
    isolated_flag: bool = False


def _rank(host: str, datastores: int) -> tuple[int, str]:
    """An election's order: most datastores, then the lexically highest host id."""
    return (datastores, host)


@dataclass
class FdmAgent:
    host: str
    peers: tuple[str, ...]
    """The cluster's other hosts (their ids, which are also their addresses)."""
    datastores: int
    """Datastores this host sees (the election's first criterion)."""
    heartbeat_datastores: bool
    """Whether the cluster has heartbeat datastores (decides 15 s or 18 s)."""
    isolation_address: str
    now: float
    settings: FdmSettings = field(default_factory=FdmSettings)

    def __post_init__(self) -> None:
        self.role = ELECTION
        self.master = ""
        self._election_began = self.now
        self._ballots: dict[str, int] = {}
        self._last_sent = float("-inf")
        self._network_seen = self.now
        """When a master last knew its network works: it heard an agent, or the
        isolation address answered (its isolation clock)."""
        self._master_heard = self.now
        self._slaves: dict[str, _Slave] = {}
        self._isolation_pinged = False

    # what the shell tells it

    def tick(self, now: float) -> list[Action]:
        self.now = now
        actions: list[Action] = []
        if self.role == ELECTION and now - self._election_began >= self.settings.election_s:
            self._end_election(actions)
        elif self.role == SLAVE and now - self._master_heard >= self.settings.master_lost_after_s:
            self._begin_election(actions)
        if self.role == MASTER:
            self._watch_slaves(actions)
            self._check_isolation(actions)
        if now - self._last_sent >= self.settings.heartbeat_interval_s:
            self._send_heartbeats(actions)
        return actions

    def heard(self, now: float, message: Message) -> list[Action]:
        self.now = now
        actions: list[Action] = []
        if message.sender == self.host or message.sender not in self.peers:
            return actions
        self._network_seen = now
        self._isolation_pinged = False
        if self.role == ISOLATED and message.role != MASTER:
            self._begin_election(actions)  # someone reaches it again: it rejoins
        if message.role == MASTER:
            self._heard_master(message, actions)
        elif message.role == ELECTION:
            if self.role == ELECTION:
                self._ballots[message.sender] = message.datastores
        elif self.role == MASTER and message.master == self.host:
            self._heard_slave(message.sender, actions)
        return actions

    def ping_answered(self, now: float, address: str, answered: bool) -> list[Action]:
        self.now = now
        actions: list[Action] = []
        if address == self.isolation_address:
            self._isolation_answered(answered, actions)
            return actions
        slave = self._slaves.get(address)
        if slave is not None and slave.pinged:
            slave.answered = slave.answered or answered
        return actions

    def datastore_heartbeat(self, now: float, host: str, live: bool, isolated: bool) -> None:
        """What the slave's heartbeat file says (live: changed lately) and whether its
        poweron file declares it isolated."""
        self.now = now
        slave = self._slaves.get(host)
        if slave is not None and slave.read_datastore:
            slave.datastore_live, slave.isolated_flag = live, isolated

    # views

    def verdicts(self) -> dict[str, str]:
        """The master's view of each slave it has heard or judged."""
        return {h: s.verdict for h, s in sorted(self._slaves.items()) if s.verdict != _UNHEARD}

    # the election

    def _begin_election(self, actions: list[Action]) -> None:
        self._election_began = self.now
        self._ballots = {}
        self._slaves = {}
        self._set_role(ELECTION, "", actions)
        self._send_heartbeats(actions)

    def _end_election(self, actions: list[Action]) -> None:
        ranks = [_rank(h, d) for h, d in self._ballots.items()]
        winner = max([*ranks, _rank(self.host, self.datastores)])[1]
        if winner == self.host:
            self._become_master(actions)
        else:
            self._follow(winner, actions)

    def _become_master(self, actions: list[Action]) -> None:
        self._network_seen = self.now
        self._isolation_pinged = False
        self._slaves = {peer: _Slave(self.now, verdict=_UNHEARD) for peer in self.peers}
        self._set_role(MASTER, self.host, actions)
        self._send_heartbeats(actions)

    def _follow(self, master: str, actions: list[Action]) -> None:
        self._slaves = {}
        self._master_heard = self.now
        self._set_role(SLAVE, master, actions)
        self._send_heartbeats(actions)

    def _heard_master(self, message: Message, actions: list[Action]) -> None:
        if self.role == MASTER:
            mine = _rank(self.host, self.datastores)
            if _rank(message.sender, message.datastores) > mine:
                self._follow(message.sender, actions)  # a merge: the lesser abdicates
        elif self.role in (ELECTION, ISOLATED):
            self._follow(message.sender, actions)
        elif message.sender == self.master:
            self._master_heard = self.now

    def _set_role(self, role: str, master: str, actions: list[Action]) -> None:
        if (role, master) != (self.role, self.master):
            self.role, self.master = role, master
            actions.append(RoleChanged(role, master))

    def _send_heartbeats(self, actions: list[Action]) -> None:
        self._last_sent = self.now
        if self.role == ISOLATED:
            actions.append(Ping(self.isolation_address))  # is the network back?
            return
        message = Message(self.host, self.role, self.datastores, self.master)
        if self.role == SLAVE:
            actions.append(Send(self.master, message))
        else:
            actions.extend(Send(peer, message) for peer in self.peers)

    # a master's watch over its slaves

    def _heard_slave(self, host: str, actions: list[Action]) -> None:
        slave = self._slaves.get(host)
        if slave is None or slave.verdict != SLAVE:
            actions.append(Verdict(host, SLAVE))
        self._slaves[host] = _Slave(silent_since=self.now)

    def _watch_slaves(self, actions: list[Action]) -> None:
        for host, slave in sorted(self._slaves.items()):
            if slave.verdict != DEAD:
                self._watch(host, slave, actions)

    def _watch(self, host: str, slave: _Slave, actions: list[Action]) -> None:
        s = self.settings
        silent = self.now - slave.silent_since
        if silent >= s.slave_ping_after_s and not slave.pinged:
            slave.pinged = True
            actions.append(Ping(host))
        if not self.heartbeat_datastores:
            if silent >= s.slave_dead_after_s:
                self._judge(host, slave, actions)
            return
        if silent >= s.slave_dead_after_s and not slave.read_datastore:
            slave.read_datastore = True
            actions.append(ReadDatastoreHeartbeat(host))
        if silent >= s.slave_dead_with_datastores_s:
            self._judge(host, slave, actions)

    def _judge(self, host: str, slave: _Slave, actions: list[Action]) -> None:
        if slave.datastore_live:
            verdict = ISOLATED if slave.isolated_flag else PARTITIONED
        elif slave.answered:
            verdict = PARTITIONED
        else:
            verdict = DEAD
        if verdict != slave.verdict:
            actions.append(Verdict(host, verdict))
        if verdict == DEAD:
            slave.verdict = DEAD
            return
        # alive but unreachable: checked again from the ping on
        since = self.now - self.settings.slave_ping_after_s
        self._slaves[host] = _Slave(since, verdict=verdict, pinged=True)
        actions.append(Ping(host))

    # its own isolation

    def _check_isolation(self, actions: list[Action]) -> None:
        if not self.peers or self._isolation_pinged:
            return
        if self.now - self._network_seen >= self.settings.isolation_after_s:
            self._isolation_pinged = True
            actions.append(Ping(self.isolation_address))

    def _isolation_answered(self, answered: bool, actions: list[Action]) -> None:
        if self.role == ISOLATED:
            if answered:
                self._begin_election(actions)  # the network is back
        elif self.role == MASTER and self._isolation_pinged:
            self._isolation_pinged = False
            if answered:
                self._network_seen = self.now  # not isolated: alone, it checks again later
            else:
                self._set_role(ISOLATED, "", actions)
                actions.append(ApplyIsolationResponse())
