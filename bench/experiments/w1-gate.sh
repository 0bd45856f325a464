# Sourced by paired-cpu.sh and level-toggle.sh: what their W1 gates share.

# A free TCP port on 127.0.0.1.
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# w1_gate_config PORT SINK_PORT METRICS_ADDRESS LEVEL: the gate's config on stdout. One open
# listener for loopback (no TLS, no AUTH: W1 measures the relay path), smtp-sink as the backend,
# no connection limits (the load is 200 sessions from one address).
w1_gate_config() {
  cat <<YAML
hostname: gate.bench.test
listeners:
  - name: open
    address: 127.0.0.1:$1
    tls: none
    requireTls: false
    requireAuth: false
    trusted: { networks: [127.0.0.0/8] }
backend: { address: 127.0.0.1:$2 }
metrics: { address: $3 }
log: { level: $4 }
shutdown: { drainSeconds: 1 }
limits: { connectionRate: "off", concurrentPerIp: "off", concurrentPerListener: "off" }
YAML
}
