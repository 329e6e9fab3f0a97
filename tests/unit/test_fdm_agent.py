"""The FDM agent's core (vSphere HA) on exact simulated times: several agents driven by
hand, a tiny deliver loop routing their messages and answering their pings as each
scenario says. Agents tick at every whole second, in host order; a fault happens half
a second after a tick, so a host last heard at 20 s is pinged at 30 s."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vsim.host.fdm import agent as agent_module
from vsim.host.fdm.agent import (
    DEAD,
    ELECTION,
    ISOLATED,
    MASTER,
    PARTITIONED,
    SLAVE,
    Action,
    ApplyIsolationResponse,
    FdmAgent,
    Message,
    Ping,
    ReadDatastoreHeartbeat,
    RoleChanged,
    Send,
    Verdict,
)

GATEWAY = "10.0.0.1"
"""Every host's isolation address (das.isolationaddress)."""
EVENTS = (RoleChanged, Verdict, ApplyIsolationResponse)
WATCH = (Ping, ReadDatastoreHeartbeat, Verdict, RoleChanged, ApplyIsolationResponse)


@dataclass
class Cluster:
    """The agents and the world around them: who is up, which links are cut, what a
    ping or a datastore heartbeat read answers."""

    agents: dict[str, FdmAgent]
    crashed: set[str] = field(default_factory=set)
    cut: set[frozenset[str]] = field(default_factory=set)
    gateway_answers: dict[str, bool] = field(default_factory=dict)
    """Per host: does its isolation address answer it (default yes)."""
    answers_ping: dict[str, bool] = field(default_factory=dict)
    """Per host: does it answer pings whatever its links say."""
    datastore_live: dict[str, bool] = field(default_factory=dict)
    """Per host: its datastore heartbeat (default: beating while it is up)."""
    poweron_isolated: dict[str, bool] = field(default_factory=dict)
    """Per host: its poweron file's flag (default: it is isolated)."""
    log: list[tuple[float, str, Action]] = field(default_factory=list)
    now: float = 0.0
    next_tick: float = 0.0

    def reach(self, a: str, b: str) -> bool:
        return not {a, b} & self.crashed and frozenset((a, b)) not in self.cut

    def crash(self, host: str) -> None:
        self.crashed.add(host)

    def isolate(self, host: str, gateway_answers: bool = False) -> None:
        """Cuts the host off from every other; its isolation address answers or not."""
        self.cut |= {frozenset((host, other)) for other in self.agents if other != host}
        self.gateway_answers[host] = gateway_answers

    def partition(self, *groups: set[str]) -> None:
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                self.cut |= {frozenset((a, b)) for a in group for b in other}

    def heal(self) -> None:
        self.cut.clear()
        self.gateway_answers.clear()

    def run_to(self, until: float) -> None:
        while self.next_tick <= until:
            self.now = self.next_tick
            for host, agent in sorted(self.agents.items()):
                if host not in self.crashed:
                    self._carry_out(host, agent.tick(self.now))
            self.next_tick += 1.0

    def _carry_out(self, host: str, actions: list[Action]) -> None:
        queue = [(host, action) for action in actions]
        while queue:
            host, action = queue.pop(0)
            self.log.append((self.now, host, action))
            queue += [(to, a) for to, answer in self._answer(host, action) for a in answer]

    def _answer(self, host: str, action: Action) -> list[tuple[str, list[Action]]]:
        now = self.now
        if isinstance(action, Send) and self.reach(host, action.to):
            return [(action.to, self.agents[action.to].heard(now, action.message))]
        if isinstance(action, Ping):
            answered = self._pong(host, action.address)
            return [(host, self.agents[host].ping_answered(now, action.address, answered))]
        if isinstance(action, ReadDatastoreHeartbeat):
            target = action.host
            live = self.datastore_live.get(target, target not in self.crashed)
            flag = self.poweron_isolated.get(target, self.agents[target].role == ISOLATED)
            self.agents[host].datastore_heartbeat(now, target, live, flag)
        return []

    def _pong(self, host: str, address: str) -> bool:
        if address == GATEWAY:
            return self.gateway_answers.get(host, True)
        return self.answers_ping.get(address, self.reach(host, address))

    def events(self, host: str | None = None, since: float = 0.0, kinds=EVENTS) -> list:
        return [
            (t, h, a)
            for t, h, a in self.log
            if t >= since and (host is None or h == host) and isinstance(a, kinds)
        ]

    def actions(self, host: str, at: float) -> list[Action]:
        return [a for t, h, a in self.log if t == at and h == host]

    def roles(self) -> dict[str, tuple[str, str]]:
        return {h: (a.role, a.master) for h, a in sorted(self.agents.items())}


def cluster(datastores: dict[str, int], heartbeat_datastores: bool = False) -> Cluster:
    hosts = tuple(sorted(datastores))
    return Cluster(
        {
            host: FdmAgent(
                host=host,
                peers=tuple(p for p in hosts if p != host),
                datastores=count,
                heartbeat_datastores=heartbeat_datastores,
                isolation_address=GATEWAY,
                now=0.0,
            )
            for host, count in datastores.items()
        }
    )


THREE = {"esxi-01": 2, "esxi-02": 3, "esxi-03": 3}
"""esxi-03 wins: most datastores, tied with esxi-02 and lexically higher."""


def elected(datastores: dict[str, int] = THREE, heartbeat_datastores: bool = False) -> Cluster:
    """A cluster run to 20 s: elected at 15 s, every slave connected at 16 s."""
    c = cluster(datastores, heartbeat_datastores)
    c.run_to(20)
    return c


# the election


@pytest.mark.parametrize(
    ("datastores", "winner"),
    [
        (THREE, "esxi-03"),
        ({"esxi-01": 4, "esxi-02": 1, "esxi-09": 3}, "esxi-01"),  # datastores before ids
        ({"esxi-01": 2, "esxi-02": 2, "esxi-10": 2}, "esxi-10"),
    ],
)
def test_the_master_is_elected_at_15_s_most_datastores_then_highest_id(datastores, winner):
    c = cluster(datastores)
    c.run_to(14)
    assert c.events() == []
    assert {role for role, _ in c.roles().values()} == {ELECTION}

    c.run_to(15)

    others = [h for h in datastores if h != winner]
    roles = c.events(kinds=RoleChanged)
    assert set(roles) == {(15.0, h, RoleChanged(SLAVE, winner)) for h in others} | {
        (15.0, winner, RoleChanged(MASTER, winner))
    }
    assert len(roles) == len(datastores)
    assert c.roles() == {
        h: (MASTER, winner) if h == winner else (SLAVE, winner) for h in sorted(datastores)
    }


def test_electing_agents_broadcast_ballots_every_second():
    c = cluster(THREE)
    c.run_to(2)
    ballot = Message("esxi-01", ELECTION, 2, "")
    assert [(t, a) for t, h, a in c.log if h == "esxi-01"] == [
        (t, Send(peer, ballot)) for t in (0.0, 1.0, 2.0) for peer in ("esxi-02", "esxi-03")
    ]


def test_slaves_follow_the_master_and_heartbeat_every_second():
    c = elected()
    assert c.events(since=16, kinds=Verdict) == [
        (16.0, "esxi-03", Verdict("esxi-01", SLAVE)),
        (16.0, "esxi-03", Verdict("esxi-02", SLAVE)),
    ]
    assert c.agents["esxi-03"].verdicts() == {"esxi-01": SLAVE, "esxi-02": SLAVE}

    heartbeat = Message("esxi-01", SLAVE, 2, "esxi-03")
    assert [(t, a) for t, h, a in c.log if h == "esxi-01" and t >= 15 and isinstance(a, Send)] == [
        (t, Send("esxi-03", heartbeat)) for t in (15.0, 16.0, 17.0, 18.0, 19.0, 20.0)
    ]
    announce = Message("esxi-03", MASTER, 3, "esxi-03")
    assert c.actions("esxi-03", 20.0) == [
        Send("esxi-01", announce),
        Send("esxi-02", announce),
    ]


def test_an_agent_that_hears_a_master_during_its_election_joins_it():
    c = elected()
    late = FdmAgent("esxi-00", ("esxi-01", "esxi-02", "esxi-03"), 9, False, GATEWAY, now=20.0)
    for agent in c.agents.values():
        agent.peers += ("esxi-00",)
    c.agents["esxi-00"] = late
    c.run_to(22)
    # at 21 it ticks first and sends its ballot, the best of all, then hears the master
    assert c.actions("esxi-00", 21.0)[:3] == [
        Send(peer, Message("esxi-00", ELECTION, 9, "")) for peer in late.peers
    ]
    assert c.events(since=21) == [
        (21.0, "esxi-00", RoleChanged(SLAVE, "esxi-03")),
        (21.0, "esxi-03", Verdict("esxi-00", SLAVE)),
    ]
    assert c.roles()["esxi-03"] == (MASTER, "esxi-03")  # a ballot does not unseat a master


# a master's verdicts on its slaves


def test_a_crashed_slave_is_pinged_at_10_s_and_dead_at_15_s():
    c = elected()
    c.crash("esxi-01")
    c.run_to(40)
    assert c.events("esxi-03", since=21, kinds=WATCH) == [
        (30.0, "esxi-03", Ping("esxi-01")),
        (35.0, "esxi-03", Verdict("esxi-01", DEAD)),
    ]
    assert c.agents["esxi-03"].verdicts() == {"esxi-01": DEAD, "esxi-02": SLAVE}


def test_with_heartbeat_datastores_a_crashed_slave_is_dead_at_18_s():
    c = elected(heartbeat_datastores=True)
    c.crash("esxi-01")
    c.run_to(40)
    assert c.events("esxi-03", since=21, kinds=WATCH) == [
        (30.0, "esxi-03", Ping("esxi-01")),
        (35.0, "esxi-03", ReadDatastoreHeartbeat("esxi-01")),
        (38.0, "esxi-03", Verdict("esxi-01", DEAD)),
    ]


@pytest.mark.parametrize(("poweron_isolated", "verdict"), [(False, PARTITIONED), (True, ISOLATED)])
def test_a_slave_whose_datastore_heartbeat_goes_on_is_partitioned_or_isolated(
    poweron_isolated, verdict
):
    c = elected(heartbeat_datastores=True)
    c.isolate("esxi-01")
    c.poweron_isolated["esxi-01"] = poweron_isolated
    c.run_to(38)
    assert c.events("esxi-03", since=21, kinds=WATCH) == [
        (30.0, "esxi-03", Ping("esxi-01")),
        (35.0, "esxi-03", ReadDatastoreHeartbeat("esxi-01")),
        (38.0, "esxi-03", Verdict("esxi-01", verdict)),
        (38.0, "esxi-03", Ping("esxi-01")),  # and it is watched on
    ]


def test_a_cut_off_slave_is_partitioned_then_isolated_once_its_poweron_file_says_so():
    c = elected(heartbeat_datastores=True)
    c.isolate("esxi-01")
    c.run_to(60)
    # esxi-01, last heard from its master at 20 s: elects itself at 45, isolated at 50
    assert c.events("esxi-01", since=21) == [
        (30.0, "esxi-01", RoleChanged(ELECTION, "")),
        (45.0, "esxi-01", RoleChanged(MASTER, "esxi-01")),
        (50.0, "esxi-01", RoleChanged(ISOLATED, "")),
        (50.0, "esxi-01", ApplyIsolationResponse()),
    ]
    # the master checks it every 8 s from its first verdict; its file says so at 50
    assert c.events("esxi-03", since=21, kinds=WATCH) == [
        (30.0, "esxi-03", Ping("esxi-01")),
        (35.0, "esxi-03", ReadDatastoreHeartbeat("esxi-01")),
        (38.0, "esxi-03", Verdict("esxi-01", PARTITIONED)),
        (38.0, "esxi-03", Ping("esxi-01")),
        (43.0, "esxi-03", ReadDatastoreHeartbeat("esxi-01")),
        (46.0, "esxi-03", Ping("esxi-01")),
        (51.0, "esxi-03", ReadDatastoreHeartbeat("esxi-01")),
        (54.0, "esxi-03", Verdict("esxi-01", ISOLATED)),
        (54.0, "esxi-03", Ping("esxi-01")),
        (59.0, "esxi-03", ReadDatastoreHeartbeat("esxi-01")),
    ]


@pytest.mark.parametrize(
    ("heartbeat_datastores", "judged"), [(False, 35.0), (True, 38.0)], ids=["no-hb-ds", "hb-ds"]
)
def test_a_slave_that_answers_the_ping_is_partitioned_not_dead(heartbeat_datastores, judged):
    c = elected(heartbeat_datastores=heartbeat_datastores)
    c.isolate("esxi-01", gateway_answers=True)
    c.answers_ping["esxi-01"] = True  # its agent's messages are lost, not the host
    c.datastore_live["esxi-01"] = False
    c.run_to(45)
    assert c.events("esxi-03", since=21, kinds=Verdict) == [
        (judged, "esxi-03", Verdict("esxi-01", PARTITIONED))
    ]

    c.heal()
    c.answers_ping.clear()
    c.run_to(50)
    assert c.events("esxi-03", since=46, kinds=Verdict) == [
        (46.0, "esxi-03", Verdict("esxi-01", SLAVE))
    ]
    assert c.events("esxi-01", since=46) == [(46.0, "esxi-01", RoleChanged(SLAVE, "esxi-03"))]


def test_a_partitioned_slave_that_then_dies_is_found_dead():
    c = elected(heartbeat_datastores=True)
    c.isolate("esxi-01", gateway_answers=True)
    c.run_to(40)
    c.crash("esxi-01")
    c.run_to(50)
    assert c.events("esxi-03", since=21, kinds=Verdict) == [
        (38.0, "esxi-03", Verdict("esxi-01", PARTITIONED)),
        (46.0, "esxi-03", Verdict("esxi-01", DEAD)),  # its heartbeat read at 43 had stopped
    ]


def test_a_new_master_watches_hosts_it_never_heard():
    c = cluster(THREE)
    c.crash("esxi-02")  # down from the start: never a slave of anyone
    c.run_to(31)
    assert c.events("esxi-03", kinds=WATCH) == [
        (15.0, "esxi-03", RoleChanged(MASTER, "esxi-03")),
        (16.0, "esxi-03", Verdict("esxi-01", SLAVE)),
        (25.0, "esxi-03", Ping("esxi-02")),
        (30.0, "esxi-03", Verdict("esxi-02", DEAD)),
    ]


# isolation


def test_a_slave_that_lost_its_master_elects_itself_at_25_s_and_is_isolated_at_30_s():
    c = elected()
    c.isolate("esxi-01")
    c.run_to(55)
    assert c.events("esxi-01", since=21) == [
        (30.0, "esxi-01", RoleChanged(ELECTION, "")),
        (45.0, "esxi-01", RoleChanged(MASTER, "esxi-01")),
        (50.0, "esxi-01", RoleChanged(ISOLATED, "")),
        (50.0, "esxi-01", ApplyIsolationResponse()),
    ]
    assert c.actions("esxi-01", 50.0) == [
        Ping(GATEWAY),
        Send("esxi-02", Message("esxi-01", MASTER, 2, "esxi-01")),
        Send("esxi-03", Message("esxi-01", MASTER, 2, "esxi-01")),
        RoleChanged(ISOLATED, ""),
        ApplyIsolationResponse(),
    ]
    # isolated, it sends nothing and pings its isolation address every second
    assert [a for t, h, a in c.log if h == "esxi-01" and t > 50] == [Ping(GATEWAY)] * 5


def test_a_slave_whose_isolation_address_answers_is_not_isolated():
    c = elected()
    c.isolate("esxi-01", gateway_answers=True)
    c.run_to(61)
    assert c.events("esxi-01", since=21) == [
        (30.0, "esxi-01", RoleChanged(ELECTION, "")),
        (45.0, "esxi-01", RoleChanged(MASTER, "esxi-01")),
        # a master alone in its partition: the others, never heard, are dead to it
        (60.0, "esxi-01", Verdict("esxi-02", DEAD)),
        (60.0, "esxi-01", Verdict("esxi-03", DEAD)),
    ]
    assert c.events("esxi-01", kinds=Ping) == [
        (50.0, "esxi-01", Ping(GATEWAY)),
        (55.0, "esxi-01", Ping("esxi-02")),
        (55.0, "esxi-01", Ping("esxi-03")),
        (55.0, "esxi-01", Ping(GATEWAY)),  # answered at 50: checked again 5 s later
        (60.0, "esxi-01", Ping(GATEWAY)),
    ]


def test_a_master_that_hears_no_one_for_5_s_and_cannot_ping_the_gateway_is_isolated():
    c = elected()
    c.isolate("esxi-03")
    c.run_to(27)
    assert c.events("esxi-03", since=21, kinds=WATCH) == [
        (25.0, "esxi-03", Ping(GATEWAY)),
        (25.0, "esxi-03", RoleChanged(ISOLATED, "")),
        (25.0, "esxi-03", ApplyIsolationResponse()),
        (26.0, "esxi-03", Ping(GATEWAY)),
        (27.0, "esxi-03", Ping(GATEWAY)),
    ]
    # its slaves lose it at 30 s and elect esxi-02 at 45 s
    c.run_to(46)
    assert c.events(since=28) == [
        (30.0, "esxi-01", RoleChanged(ELECTION, "")),
        (30.0, "esxi-02", RoleChanged(ELECTION, "")),
        (45.0, "esxi-01", RoleChanged(SLAVE, "esxi-02")),
        (45.0, "esxi-02", RoleChanged(MASTER, "esxi-02")),
        (46.0, "esxi-02", Verdict("esxi-01", SLAVE)),
    ]


def test_a_master_whose_slaves_died_and_whose_gateway_answers_stays_master():
    c = elected()
    c.crash("esxi-01")
    c.crash("esxi-02")
    c.run_to(36)
    assert c.events("esxi-03", since=21, kinds=WATCH) == [
        (25.0, "esxi-03", Ping(GATEWAY)),
        (30.0, "esxi-03", Ping("esxi-01")),
        (30.0, "esxi-03", Ping("esxi-02")),
        (30.0, "esxi-03", Ping(GATEWAY)),
        (35.0, "esxi-03", Verdict("esxi-01", DEAD)),
        (35.0, "esxi-03", Verdict("esxi-02", DEAD)),
        (35.0, "esxi-03", Ping(GATEWAY)),
    ]
    assert c.agents["esxi-03"].role == MASTER


def test_an_isolated_agent_that_hears_others_again_rejoins():
    c = elected(heartbeat_datastores=True)
    c.isolate("esxi-03")
    c.run_to(70)
    assert c.agents["esxi-03"].role == ISOLATED
    # the new master found the old one isolated: its datastore heartbeat and poweron file
    assert c.events("esxi-02", since=47, kinds=Verdict) == [
        (63.0, "esxi-02", Verdict("esxi-03", ISOLATED))
    ]

    c.heal()
    c.run_to(72)
    assert c.events(since=71) == [
        (71.0, "esxi-03", RoleChanged(SLAVE, "esxi-02")),
        (71.0, "esxi-02", Verdict("esxi-03", SLAVE)),
    ]
    assert c.roles() == {
        "esxi-01": (SLAVE, "esxi-02"),
        "esxi-02": (MASTER, "esxi-02"),
        "esxi-03": (SLAVE, "esxi-02"),
    }


def test_an_isolated_agent_whose_gateway_answers_again_holds_an_election():
    c = elected()
    c.isolate("esxi-01")
    c.run_to(55)
    c.gateway_answers["esxi-01"] = True  # the agents stay out of reach
    c.run_to(71)
    assert c.events("esxi-01", since=51) == [
        (56.0, "esxi-01", RoleChanged(ELECTION, "")),
        (71.0, "esxi-01", RoleChanged(MASTER, "esxi-01")),
    ]


# partitions


def test_two_masters_that_hear_each_other_merge_and_the_lesser_abdicates():
    c = cluster({"esxi-01": 2, "esxi-02": 2, "esxi-03": 2, "esxi-04": 2}, True)
    c.partition({"esxi-01", "esxi-02"}, {"esxi-03", "esxi-04"})
    c.run_to(40)
    assert c.roles() == {
        "esxi-01": (SLAVE, "esxi-02"),
        "esxi-02": (MASTER, "esxi-02"),
        "esxi-03": (SLAVE, "esxi-04"),
        "esxi-04": (MASTER, "esxi-04"),
    }
    # each master sees the other side partitioned (their datastore heartbeats go on)
    assert c.agents["esxi-02"].verdicts() == {
        "esxi-01": SLAVE,
        "esxi-03": PARTITIONED,
        "esxi-04": PARTITIONED,
    }
    assert c.agents["esxi-04"].verdicts() == {
        "esxi-01": PARTITIONED,
        "esxi-02": PARTITIONED,
        "esxi-03": SLAVE,
    }

    c.heal()
    c.run_to(52)
    assert c.events(since=41) == [
        (41.0, "esxi-02", RoleChanged(SLAVE, "esxi-04")),
        (41.0, "esxi-04", Verdict("esxi-02", SLAVE)),
        # esxi-01 last heard its master as one at 41: it elects at 51 and finds esxi-04
        (51.0, "esxi-01", RoleChanged(ELECTION, "")),
        (51.0, "esxi-01", RoleChanged(SLAVE, "esxi-04")),
        (51.0, "esxi-04", Verdict("esxi-01", SLAVE)),
    ]
    assert c.agents["esxi-04"].verdicts() == {
        "esxi-01": SLAVE,
        "esxi-02": SLAVE,
        "esxi-03": SLAVE,
    }


def test_the_core_is_sans_io():
    tree = ast.parse(Path(agent_module.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported == {"__future__", "dataclasses"}
