#!/usr/bin/env python3
"""What announcing a write costs Redis: our notice channel against Redis client tracking.

Starts its own redis-server on port 6392 (redis-server and redis-benchmark on PATH), then with
redis-benchmark (4 clients, pipelines of 16, 200,000 writes of 1 KiB each) measures: a plain
SET of keys nobody tracks; the same SET of keys under a prefix a client tracks with
`CLIENT TRACKING ON BCAST PREFIX` (Redis sends an invalidation per write); and the store's
write-and-announce script (SET + PUBLISH to one subscriber), as `RedisStore::put` runs it.
Prints requests/s and Redis's own usec_per_call per command. Used for the README's
"Why the notice channel" paragraph: `python3 benches/load/notice_cost.py`.
"""
import socket, subprocess, time, sys, re
PORT=6392
def conn():
    s=socket.create_connection(("127.0.0.1",PORT)); return s
def cmd(s,*args):
    out=b"*%d\r\n"%len(args)+b"".join(b"$%d\r\n%s\r\n"%(len(a),a) for a in [x.encode() if isinstance(x,str) else x for x in args])
    s.sendall(out); return s.recv(65536)
subprocess.run(["redis-server","--port",str(PORT),"--save","","--appendonly","no","--daemonize","yes"],stdout=subprocess.DEVNULL)
time.sleep(0.3)
sub2=conn(); r=cmd(sub2,"CLIENT","ID"); sid=int(r[1:].split(b"\r\n")[0])
cmd(sub2,"SUBSCRIBE","__redis__:invalidate")
notice=conn(); cmd(notice,"SUBSCRIBE","fills")
trk=conn(); print("tracking:", cmd(trk,"CLIENT","TRACKING","ON","REDIRECT",str(sid),"BCAST","PREFIX","t:"))
PUT="redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) redis.call('publish', ARGV[3], ARGV[4]) return 1"
c=conn(); sha=cmd(c,"SCRIPT","LOAD",PUT).split(b"\r\n")[1].decode()
V="x"*1024
def bench(name, args):
    cmd(c,"CONFIG","RESETSTAT")
    t=time.time()
    out=subprocess.run(["redis-benchmark","-p",str(PORT),"-c","4","-P","16","-n","200000","-q","-r","1000000"]+args,capture_output=True,text=True).stdout
    rps=re.findall(r"([0-9.]+) requests per second",out)
    info=cmd(c,"INFO","commandstats").decode()
    print(name, "rps", rps[-1] if rps else out[-200:], [l for l in info.split("\r\n") if l.startswith("cmdstat_") and "config" not in l])
bench("SET no-tracking-prefix (u:)", ["SET","u:__rand_int__",V,"PX","60000"])
bench("SET tracked prefix (t:) BCAST", ["SET","t:__rand_int__",V,"PX","60000"])
bench("EVALSHA put+publish (1 subscriber)", ["EVALSHA",sha,"1","u:__rand_int__",V,"60000","fills","Cu:__rand_int__"])
cmd(c,"SHUTDOWN","NOSAVE")
