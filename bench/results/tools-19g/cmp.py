import collections,sys
pats = {"under Session.batch (binding)": "Session.batch (", "under Session.run (execute_async, wait)": "Session.run (chatd/store/cql",
 "trio wakeups from driver (EntryQueue.task, drain)": ("EntryQueue.task", "WakeupSocketpair.drain", "Session._drain"),
 "_Combiner._flush (all store writes)": "_Combiner._flush", "_gather": "CassandraStore._gather",
 "server sessions (serve_connection)": "ChatServer.serve_connection", "epoll wait": "get_events",
 "libev: wakeup trio (run_sync_soon)": "run_sync_soon", "libev: handle_read": "handle_read", "libev: handle_write": "handle_write"}
for f in sys.argv[1:]:
    T=collections.Counter(); c=collections.Counter()
    for line in open(f):
        stack,_,n=line.rstrip().rpartition(" "); n=int(n); fr=stack.split(";")
        th="main" if "MainThread" in fr[0] else "libev"
        T[th]+=n
        for k,p in pats.items():
            ps = p if isinstance(p, tuple) else (p,)
            if any(q in x for x in fr[1:] for q in ps): c[k]+=n
    print(f, dict(T), "(% of main-thread samples)")
    for k in pats: print(f"  {c[k]/T['main']*100:5.1f}%  {k}")
