"""Consumer groups over the public gRPC API, as any language would use it:
members on `ConsumeGroup` streams share a topic's partitions, hand them
over through revoke-commit-release, and commit; a commit at a stale epoch
or from an unknown member is refused with a stable reason."""

import queue
import threading
import time
import uuid

import grpc
import pytest

PARTITIONS = 4


def reason(err: grpc.RpcError) -> str:
    md = dict(err.trailing_metadata() or ())
    return md.get("streambus-reason")


@pytest.fixture
def topic(stubs, pb):
    name = f"pytest-groups-{uuid.uuid4().hex[:12]}"
    stubs.admin.CreateTopic(
        pb.admin.CreateTopicRequest(name=name, partitions=PARTITIONS, replication_factor=1),
        timeout=30,
    )
    yield name
    try:
        stubs.admin.DeleteTopic(pb.admin.DeleteTopicRequest(name=name), timeout=30)
    except grpc.RpcError:
        pass


def produce(stubs, pb, topic, values):
    records = [pb.common.Record(key=f"k{v}".encode(), value=str(v).encode()) for v in values]
    resp = stubs.produce.Produce(
        pb.produce.ProduceRequest(
            batches=[pb.produce.ProduceBatch(topic=topic, records=records)],
            acks=pb.common.ACKS_ALL,
        ),
        timeout=30,
    )
    assert not resp.results[0].HasField("error"), resp.results[0].error


class Member:
    """One group member on a ConsumeGroup stream. It reports its positions
    every 200 ms (that keeps it alive), and when partitions are revoked it
    commits their positions and releases them."""

    def __init__(self, stubs, pb, group, topic):
        self.pb = pb
        self.lock = threading.Lock()
        self.requests = queue.Queue()
        self.member_id = ""
        self.epoch = 0
        self.assigned = set()
        self.values = []
        self.positions = {}
        self.commits = {}
        self.next_commit = 1
        self.error = None
        self.requests.put(
            pb.group.ConsumeGroupRequest(
                join=pb.group.JoinGroup(
                    group=group, topics=[topic], auto_offset_reset="earliest", client_id="pytest"
                )
            )
        )
        self.responses = stubs.group.ConsumeGroup(self._outgoing(), timeout=300)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _offsets(self):
        return [
            self.pb.group.OffsetCommit(topic=t, partition=p, offset=o)
            for (t, p), o in self.positions.items()
        ]

    def _outgoing(self):
        while True:
            try:
                item = self.requests.get(timeout=0.2)
            except queue.Empty:
                with self.lock:
                    offsets = self._offsets()
                item = self.pb.group.ConsumeGroupRequest(
                    positions=self.pb.group.GroupOffsets(offsets=offsets)
                )
            if item is None:
                return
            yield item

    def _read(self):
        pb = self.pb
        try:
            for resp in self.responses:
                kind = resp.WhichOneof("response")
                with self.lock:
                    if kind == "assignment":
                        a = resp.assignment
                        self.member_id, self.epoch = a.member_id, a.member_epoch
                        self.assigned = {(t.topic, p) for t in a.assigned for p in t.partitions}
                        revoking = {(t.topic, p) for t in a.revoking for p in t.partitions}
                        if revoking:
                            # Commit what was processed, then release.
                            offsets = [
                                pb.group.OffsetCommit(topic=t, partition=p, offset=o)
                                for (t, p), o in self.positions.items()
                                if (t, p) in revoking
                            ]
                            cid = self.next_commit
                            self.next_commit += 1
                            self.requests.put(
                                pb.group.ConsumeGroupRequest(
                                    commit=pb.group.GroupCommit(id=cid, offsets=offsets)
                                )
                            )
                            by_topic = {}
                            for t, p in revoking:
                                by_topic.setdefault(t, []).append(p)
                                self.positions.pop((t, p), None)
                            self.requests.put(
                                pb.group.ConsumeGroupRequest(
                                    release=pb.group.GroupRelease(
                                        partitions=[
                                            pb.group.TopicPartitions(topic=t, partitions=ps)
                                            for t, ps in by_topic.items()
                                        ]
                                    )
                                )
                            )
                    elif kind == "records":
                        r = resp.records
                        for rec in r.records:
                            self.values.append(int(rec.value))
                        self.positions[(r.topic, r.partition)] = r.next_offset
                    elif kind == "committed":
                        c = resp.committed
                        self.commits[c.id] = c
        except grpc.RpcError as e:
            self.error = e

    def commit(self, timeout=30):
        with self.lock:
            cid = self.next_commit
            self.next_commit += 1
            offsets = self._offsets()
        self.requests.put(
            self.pb.group.ConsumeGroupRequest(commit=self.pb.group.GroupCommit(id=cid, offsets=offsets))
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if cid in self.commits:
                    return self.commits[cid]
            time.sleep(0.05)
        raise AssertionError("no commit result")

    def leave(self):
        self.requests.put(self.pb.group.ConsumeGroupRequest(leave=self.pb.group.GroupLeave()))
        self.reader.join(timeout=30)
        self.requests.put(None)

    def close(self):
        self.requests.put(None)
        self.responses.cancel()


def wait(what, f, timeout=60):
    deadline = time.monotonic() + timeout
    while not f():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def test_members_share_partitions_commit_and_hand_over(stubs, pb, topic):
    group = f"pytest-{uuid.uuid4().hex[:8]}"
    a = Member(stubs, pb, group, topic)
    wait("a owns every partition", lambda: len(a.assigned) == PARTITIONS)
    b = Member(stubs, pb, group, topic)
    try:
        wait("two partitions each", lambda: len(a.assigned) == 2 and len(b.assigned) == 2)
        assert a.assigned.isdisjoint(b.assigned)

        produce(stubs, pb, topic, range(40))
        wait("every record read", lambda: set(a.values) | set(b.values) == set(range(40)))
        for m in (a, b):
            result = m.commit()
            assert not result.HasField("error"), result.error

        d = stubs.group.DescribeGroup(pb.group.DescribeGroupRequest(group=group), timeout=30)
        assert d.group.state == "stable"
        assert len(d.group.members) == 2
        assert d.total_lag == 0
        assert len(d.partitions) == PARTITIONS

        listed = stubs.group.ListGroups(pb.group.ListGroupsRequest(), timeout=30)
        assert any(g.group == group and g.members == 2 for g in listed.groups)

        # A commit at a stale epoch, or from a member the group does not
        # know, is refused with a stable reason.
        with pytest.raises(grpc.RpcError) as info:
            stubs.group.CommitOffsets(
                pb.group.CommitOffsetsRequest(
                    group=group,
                    member_id=a.member_id,
                    member_epoch=a.epoch + 5,
                    offsets=[pb.group.OffsetCommit(topic=topic, partition=0, offset=0)],
                ),
                timeout=30,
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(info.value) == "FENCED_MEMBER_EPOCH"
        with pytest.raises(grpc.RpcError) as info:
            stubs.group.CommitOffsets(
                pb.group.CommitOffsetsRequest(
                    group=group,
                    member_id="nobody",
                    member_epoch=1,
                    offsets=[pb.group.OffsetCommit(topic=topic, partition=0, offset=0)],
                ),
                timeout=30,
            )
        assert reason(info.value) == "UNKNOWN_MEMBER"

        # b leaves: a gets its partitions, and reads from b's commits on.
        b.leave()
        wait("a owns every partition again", lambda: len(a.assigned) == PARTITIONS)
        produce(stubs, pb, topic, range(40, 60))
        wait("a reads what comes next", lambda: set(range(40, 60)) <= set(a.values))
        assert set(a.values) & set(b.values) == set(), "a record was read twice"
    finally:
        a.close()
        b.close()

    committed = stubs.group.FetchOffsets(pb.group.FetchOffsetsRequest(group=group), timeout=30)
    assert len(committed.offsets) == PARTITIONS
