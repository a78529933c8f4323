import sys, time, os
from cassandra.cluster import Cluster
from cassandra.query import BatchStatement, BatchType
from cassandra import ConsistencyLevel
pid = int(sys.argv[1])
def cpu(p):
    st = open(f"/proc/{p}/stat").read().rsplit(")",1)[1].split(); return (int(st[11])+int(st[12]))/100
c = Cluster(["127.0.0.1"], port=9042); s = c.connect()
s.execute("CREATE KEYSPACE IF NOT EXISTS mb WITH replication={'class':'SimpleStrategy','replication_factor':1}")
s.execute("CREATE TABLE IF NOT EXISTS mb.t (p text, c int, v blob, PRIMARY KEY (p, c))")
ins = s.prepare("INSERT INTO mb.t (p, c, v) VALUES (?, ?, ?)"); ins.consistency_level = ConsistencyLevel.LOCAL_QUORUM
def run(nreq, rows, parts, inflight=16):
    futs = []; n = 0; t0 = time.time(); j0 = cpu(pid); me0 = time.process_time()
    import collections
    q = collections.deque()
    for i in range(nreq):
        b = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
        for r in range(rows):
            b.add(ins, (f"p{(i*parts + r % parts) % 1000}", i*rows + r, b"x"*100))
        q.append(s.execute_async(b))
        if len(q) >= inflight: q.popleft().result()
    while q: q.popleft().result()
    el = time.time() - t0; j = cpu(pid) - j0
    print(f"req {nreq} rows/req {rows} parts/req {parts}: {nreq/el:.0f} req/s, JVM {j/nreq*1e6:.0f} us/req {j/(nreq*rows)*1e6:.0f} us/row, JVM {j/el:.0%}")
for _ in range(2):
    run(3000, 1, 1); run(3000, 5, 1); run(3000, 20, 1); run(1500, 20, 20); run(1500, 40, 40)
