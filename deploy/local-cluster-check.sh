#!/usr/bin/env bash
# The user's cluster commands, run for real on one machine: `ray up`, `ray submit ... launch.py` with more rollout
# actors than the head holds (the autoscaler adds the worker), the worker removed when idle, `ray submit ... --resume`
# (added again), `ray down`; with deploy/cluster-onprem.yaml as shipped, only its EDIT values changed: the head's
# address, one worker at 127.0.0.2, the SSH account and key, the datasets' folder (deploy/local_cluster.py derive).
#
#   bash deploy/local-cluster-check.sh     # as root, in a checkout installed by the README's `# test` line
#
# SSH: a private sshd on loopback only (127.0.0.1 for `ray up`, 127.0.0.2 for the worker; port 22, which Ray's SSH
# runner always uses), with its own host key and authorised key in a temporary folder; no system file touched.
# Python: the hosts' ~/.bashrc names this checkout's environment (GCRL_VENV), so the cluster file's setup commands
# install GCRL there and download nothing big. Checks, one line per failure (exit status 1): the job trains
# (`done: N updates`, N > 0) and leaves a checkpoint, the autoscaler adds the worker on demand and removes it when
# idle, rollout actors run on both nodes, the head's Prometheus scraped the driver and both nodes' Ray metrics, the
# job resumes from its checkpoint, `ray down` leaves no Ray or Prometheus process. On exit, failing or not, it stops
# what it started and removes or restores what it wrote (~/.bashrc, the environment's install records, home copies).
# `ray up` and `ray down` stop every Ray process on this machine: run nothing else with Ray meanwhile.
#
# Environment: GCRL_VENV (default ./.venv), GCRL_DATA_DIR (../shared/data), GCRL_CHECK_SECONDS (training seconds of
# the first job, 120), GCRL_CHECK_RESUME_SECONDS (of the resumed job, 120), GCRL_CHECK_COMPARE=1 (then also run launch.py directly with the same flags and print the ratio).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(cd "${GCRL_VENV:-$REPO/.venv}" && pwd)
DATA=$(cd "${GCRL_DATA_DIR:-$REPO/../shared/data}" && pwd)
FIRST_SECONDS=${GCRL_CHECK_SECONDS:-120}
# The resumed job must outlast the worker's return: a CI run on 2 cores saw `ray start` there take 35 s after the
# autoscaler's "Adding 1 node(s)" at +12 s, and a 45 s job stopped 1 s before its actors reached the worker.
RESUME_SECONDS=${GCRL_CHECK_RESUME_SECONDS:-120}
IDLE_WAIT=150                              # idle_timeout_minutes (1) + the autoscaler's rounds and a drain
# 3 actors of 0.75 CPU + learner 1 + shard 0.25 = 3.5 CPUs: more than the head's 2, what head and worker hold.
JOB_FLAGS=(--num-actors 3 --actor-cpus 0.75 --progress-every 10 --eval-every 0)
WORKER_IP=127.0.0.2
SSH_HEAD=127.0.0.1                         # where `ray up` reaches the head (external_head_ip): loopback
CLUSTER=gcrl-onprem
RUN_DIR='~/runs/gcrl-cluster-check'        # expanded on the head
PROMETHEUS=http://127.0.0.1:9090
HOME_COPIES=(gcrl launch.py ray_bootstrap_config.yaml ray_bootstrap_key.pem runs/gcrl-cluster-check)
RAY_TMP=/tmp/ray
KEY_LINES='^(joined|started a local Ray|waiting for|starting:|ray runtime|learner started|placement:|done:|error:|resuming|replay restored|head-prometheus|linked|mnist|fashion)|autoscaler|stopped by'
export RAY_USAGE_STATS_ENABLED=0           # Ray would report usage to the internet otherwise
export PATH="$VENV/bin:$PATH"

WORK=""
FAILURES=0
STARTED=$SECONDS

say() { printf '[%4ds] %s\n' "$((SECONDS - STARTED))" "$*"; }
fail() { echo "FAIL: $*" >&2; FAILURES=$((FAILURES + 1)); }
die() { fail "$*"; exit 1; }
py() { "$VENV/bin/python" "$@"; }
plain() { sed -e 's/\x1b\[[0-9;]*m//g' -e 's/\r//g' "$1"; }   # a log without colours and carriage returns
key_lines() {  # what a user reads in a command's output: GCRL's lines and the autoscaler's events, not Ray's log lines
    plain "$1" | grep -E "$KEY_LINES" | grep -vE '^[0-9]{4}-[0-9]{2}-[0-9]{2} |Tip: use' | sed 's/^/    /' || true
}

preflight() {
    [ "$(id -u)" = 0 ] || die "run as root: the check starts its own sshd on port 22"
    [ -x "$VENV/bin/ray" ] || die "no ray in $VENV; install the checkout first (README, the line tagged # test)"
    [ -d "$DATA/MNIST/raw" ] || die "no MNIST under $DATA; set GCRL_DATA_DIR"
    [ ! -e "$RAY_TMP/ray_current_cluster" ] || die "a Ray runs on this machine ($RAY_TMP/ray_current_cluster); ray up would stop it"
    [ ! -e "$RAY_TMP/cluster-$CLUSTER.state" ] || die "a $CLUSTER cluster is recorded in $RAY_TMP/cluster-$CLUSTER.state; ray down it first"
    [ ! -e /tmp/gcrl-prometheus ] || die "/tmp/gcrl-prometheus exists (a head's Prometheus); stop it first"
    local name
    for name in "${HOME_COPIES[@]}" gcrl-venv; do
        [ ! -e "$HOME/$name" ] || die "$HOME/$name exists; the check would overwrite it (move it away)"
    done
    install_missing
}

install_missing() {
    local missing=()
    command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v rsync >/dev/null || missing+=(rsync)
    command -v pgrep >/dev/null || missing+=(procps)
    command -v prometheus >/dev/null || missing+=(prometheus)
    [ ${#missing[@]} = 0 ] && return 0
    say "installing ${missing[*]} (apt-get; their services are not started)"
    local policy=/usr/sbin/policy-rc.d made=""
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && made=1; fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
        { [ -z "$made" ] || rm -f $policy; die "apt-get install ${missing[*]} failed"; }
    [ -z "$made" ] || rm -f $policy
}

remember_machine() {
    # What exists before, so cleanup removes exactly what the cluster added (Ray's sessions, a token, temp sockets).
    ls -A "$HOME" >"$WORK/home.before"
    ls -A "$RAY_TMP" >"$WORK/ray-tmp.before" 2>/dev/null || : >"$WORK/ray-tmp.before"
    readlink "$RAY_TMP/session_latest" >"$WORK/session-latest.before" 2>/dev/null || :
    [ -e "$HOME/.ray/auth_token" ] || touch "$WORK/token.absent"
    ls -d /tmp/pymp-* >"$WORK/pymp.before" 2>/dev/null || :
    ls -d /tmp/ray_ssh_* >"$WORK/ray-ssh.before" 2>/dev/null || :
    ls -d /tmp/ray-config-* >"$WORK/ray-config.before" 2>/dev/null || :   # `ray down` caches the config there
}

start_sshd() {
    ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key" && ssh-keygen -q -t ed25519 -N '' -f "$WORK/id_ed25519"
    cp "$WORK/id_ed25519.pub" "$WORK/authorized_keys"
    cat >"$WORK/sshd_config" <<EOF
ListenAddress $SSH_HEAD:22
ListenAddress $WORKER_IP:22
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PidFile $WORK/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 50
MaxSessions 50
EOF
    [ -d /run/sshd ] || { mkdir -p /run/sshd && touch "$WORK/made-run-sshd"; }
    "$(command -v sshd || echo /usr/sbin/sshd)" -f "$WORK/sshd_config" -E "$WORK/sshd.log" ||
        die "sshd did not start: $(tail -1 "$WORK/sshd.log")"
    local ssh=(ssh -i "$WORK/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes)
    "${ssh[@]}" "root@$WORKER_IP" true 2>/dev/null || die "ssh root@$WORKER_IP fails: $(tail -1 "$WORK/sshd.log")"
    say "sshd on $SSH_HEAD:22 and $WORKER_IP:22 (its own host key and authorised key, in $WORK)"
}

point_shells_at_venv() {
    # Ray runs every command in a login shell, which reads ~/.bashrc: name this checkout's environment there (the
    # cluster file's setup commands then install GCRL into it and activate it). Restored from the copy on exit.
    cp -p "$HOME/.bashrc" "$WORK/bashrc" 2>/dev/null || : >"$WORK/bashrc.absent"
    # pip writes nothing under ~/.cache either (its version check made ~/.cache/pip on a home that had none).
    printf 'export GCRL_VENV=%s RAY_USAGE_STATS_ENABLED=0 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1  # gcrl-cluster-check\n' \
        "$VENV" >>"$HOME/.bashrc"
    # `pip install -e ~/gcrl` re-points the environment's editable install; its records are put back on exit.
    mkdir -p "$WORK/install-records"
    cp -a "$(site_packages)"/__editable__*gcrl_generative* "$(site_packages)"/gcrl_generative-*.dist-info \
        "$WORK/install-records/"
}

site_packages() { py -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

ssh_control_dir() {  # where Ray's SSH command runner keeps this cluster's connection sockets
    py -c "import getpass, hashlib; h = lambda s: hashlib.sha256(s.encode()).hexdigest()[:10]; \
print(f'/tmp/ray_ssh_{h(getpass.getuser())}/{h(\"$CLUSTER\")}')"
}

write_cluster_file() {
    HEAD_IP=$(py -c 'import ray; print(ray.util.get_node_ip_address())')
    YAML=$WORK/cluster.yaml
    py -m deploy.local_cluster derive --source "$REPO/deploy/cluster-onprem.yaml" --out "$YAML" \
        --head-ip "$HEAD_IP" --external-head-ip "$SSH_HEAD" --worker-ip "$WORKER_IP" --user root \
        --key "$WORK/id_ed25519" --data "$DATA"
    say "cluster file: deploy/cluster-onprem.yaml with head $HEAD_IP (Ray's address for this machine; ray up reaches it at $SSH_HEAD), worker $WORKER_IP, data $DATA"
}

worker_state() {  # running or terminated, as the head's autoscaler recorded it
    py -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]['state'])" \
        "$RAY_TMP/cluster-$CLUSTER.state" "$WORKER_IP" 2>/dev/null || echo unknown
}

live_nodes() {  # the cluster has token authentication on: say so, the token is ~/.ray/auth_token
    RAY_AUTH_MODE=token py -m deploy.local_cluster nodes "$HEAD_IP:6379" 2>/dev/null | tr '\n' ' '
}

prometheus_value() { py -m deploy.local_cluster query "$PROMETHEUS" "$1" 2>/dev/null || echo 0; }

ray_up() {
    say "ray up $YAML"
    local began=$SECONDS
    timeout 600 ray up -y --no-config-cache --disable-usage-stats "$YAML" >"$WORK/up.log" 2>&1 ||
        { plain "$WORK/up.log" | tail -25 >&2; die "ray up failed (its last lines above)"; }
    key_lines "$WORK/up.log"
    say "ray up finished in $((SECONDS - began)) s; live nodes: $(live_nodes)"
    [ "$(live_nodes)" = "$HEAD_IP " ] || fail "after ray up the cluster should be the head alone (min_workers 0), got: $(live_nodes)"
}

submit() {  # submit LOG EXTRA-FLAGS...: ray submit launch.py with the job's flags; its exit status
    local log=$1 began=$SECONDS status=0
    shift
    # bounded (the job's own --time-limit plus set-up), so a stuck job fails the check instead of hanging CI
    timeout 900 ray submit --no-config-cache "$YAML" "$REPO/launch.py" -- "${JOB_FLAGS[@]}" --checkpoint-dir "$RUN_DIR" "$@" \
        >"$log" 2>&1 || status=$?
    key_lines "$log"
    say "ray submit finished in $((SECONDS - began)) s (exit status $status)"
    return $status
}

check_job() {  # check_job LOG NAME: trained, left a checkpoint, and the autoscaler added the worker for it
    local log=$1 name=$2 done_line checkpoint
    done_line=$(plain "$log" | grep -E '^done: [0-9]+ updates' | tail -1)
    [ -n "$done_line" ] || { fail "$name: no 'done:' line; the job did not finish"; return 0; }
    [[ $done_line =~ ^done:\ 0\ updates ]] && fail "$name: no learner update ($done_line)"
    checkpoint=$(sed -E 's/.*checkpoint: //' <<<"$done_line")
    [ -f "$checkpoint/manifest.json" ] || fail "$name: no complete checkpoint at '$checkpoint'"
    plain "$log" | grep -F "Adding 1 node(s) of type local.cluster.node" >/dev/null ||
        fail "$name: the autoscaler did not add the worker for it"
    local nodes
    nodes=$(py -m deploy.local_cluster placement "$log")
    [[ " $nodes " == *" $HEAD_IP="* && " $nodes " == *" $WORKER_IP="* ]] ||
        fail "$name: rollout actors did not run on both nodes (placement: ${nodes:-none printed})"
}

first_job() {
    say "ray submit launch.py: ${JOB_FLAGS[*]} --time-limit $FIRST_SECONDS"
    submit "$WORK/first.log" --time-limit "$FIRST_SECONDS" || fail "first job: ray submit exited non-zero"
    check_job "$WORK/first.log" "first job"
    local updates ray_targets
    updates=$(prometheus_value 'max_over_time(gcrl_learner_updates_total{job="gcrl",kind="proposal"}[30m])')
    ray_targets=$(prometheus_value 'count(max_over_time(up{job="ray"}[30m]) == 1)')
    say "Prometheus on the head: $updates learner updates scraped from the driver; Ray metrics from $ray_targets endpoints"
    awk "BEGIN {exit !($updates > 0)}" || fail "Prometheus on the head never scraped the driver's learner updates"
    awk "BEGIN {exit !($ray_targets >= 2)}" || fail "Prometheus scraped Ray's metrics from $ray_targets endpoints, expected both nodes"
}

idle_removal() {
    say "waiting for the autoscaler to remove the idle worker (idle_timeout_minutes: 1)"
    local began=$SECONDS
    while [ "$(worker_state)" != terminated ] && [ $((SECONDS - began)) -lt $IDLE_WAIT ]; do sleep 5; done
    if [ "$(worker_state)" != terminated ]; then
        fail "the idle worker was not removed within $IDLE_WAIT s (state: $(worker_state))"
        return 0
    fi
    local waited=$((SECONDS - began))
    while [[ "$(live_nodes)" == *"$WORKER_IP"* ]] && [ $((SECONDS - began)) -lt $IDLE_WAIT ]; do sleep 3; done
    say "worker removed $waited s after the job ended; live nodes: $(live_nodes)"
    [[ "$(live_nodes)" != *"$WORKER_IP"* ]] || fail "the removed worker's raylet is still in the cluster"
}

resume_job() {
    say "ray submit launch.py ... --resume --time-limit $RESUME_SECONDS"
    submit "$WORK/resume.log" --time-limit "$RESUME_SECONDS" --resume || fail "resumed job: ray submit exited non-zero"
    local first resumed_at
    first=$(plain "$WORK/first.log" | sed -nE 's/^done: ([0-9]+) updates.*/\1/p' | tail -1)
    resumed_at=$(plain "$WORK/resume.log" | sed -nE 's/^resuming from .* at update ([0-9]+)$/\1/p')
    [ -n "$resumed_at" ] && [ "$resumed_at" = "${first:-none}" ] ||
        fail "resumed job: did not resume at the first job's update ${first:-?} (got '${resumed_at:-no resume line}')"
    check_job "$WORK/resume.log" "resumed job"
}

ray_down() {
    local began=$SECONDS
    timeout 300 ray down -y "$YAML" >"$WORK/down.log" 2>&1 || { plain "$WORK/down.log" | tail -5 >&2; fail "ray down exited non-zero"; }
    touch "$WORK/down-done"
    local deadline=$((SECONDS + 20))
    while pgrep -f "prometheus --config.file=$HOME/gcrl/deploy/prometheus.yml" >/dev/null && [ $SECONDS -lt $deadline ]; do sleep 1; done
    say "ray down finished in $((SECONDS - began)) s"
    ! pgrep -x raylet >/dev/null && ! pgrep -x gcs_server >/dev/null || fail "ray down left Ray processes: $(pgrep -ax 'raylet|gcs_server' | head -3)"
    ! pgrep -f "prometheus --config.file=$HOME/gcrl/deploy/prometheus.yml" >/dev/null || fail "ray down left the head's Prometheus running"
}

compare_direct() {  # the first job's flags run by launch.py directly on this machine, and the ratio
    local log=$WORK/direct.log
    [ ! -e "$RAY_TMP/ray_current_cluster" ] || { fail "no direct run: Ray still runs here (it would join it)"; return 0; }
    say "launch.py directly, same flags: ${JOB_FLAGS[*]} --time-limit $FIRST_SECONDS"
    (cd "$REPO" && py launch.py "${JOB_FLAGS[@]}" --time-limit "$FIRST_SECONDS" --checkpoint-dir "$WORK/direct-run") \
        >"$log" 2>&1 ||
        fail "the direct run exited non-zero"
    key_lines "$log"
    py - "$WORK/first.log" "$log" <<'EOF'
import re, sys
def done(path):
    found = re.findall(r"^done: (\d+) updates, (\d+) env steps in (\d+)s", open(path, errors="replace").read(), re.M)
    return tuple(map(int, found[-1])) if found else (0, 0, 1)
(cu, cs, ct), (du, ds, dt) = done(sys.argv[1]), done(sys.argv[2])
print(f"cluster vs direct, same flags: updates {cu} vs {du} ({100 * cu / max(du, 1):.0f}%), "
      f"env steps {cs} vs {ds} ({100 * cs / max(ds, 1):.0f}%), in {ct} s vs {dt} s")
EOF
}

cleanup() {
    local status=$?
    set +e
    [ -z "${YAML:-}" ] || [ -e "$WORK/down-done" ] || timeout 120 ray down -y "$YAML" >/dev/null 2>&1
    stop_leftovers
    [ -z "$WORK" ] || { restore_home; remove_ray_files; check_nothing_left; rm -rf "$WORK"; }
    if [ "$FAILURES" -gt 0 ] || [ "$status" != 0 ]; then
        echo "local cluster check: FAILED ($FAILURES failures) in $((SECONDS - STARTED)) s" >&2
        exit 1
    fi
    echo "local cluster check: passed in $((SECONDS - STARTED)) s"
}

stop_leftovers() {
    local group
    group=$(cat /tmp/gcrl-prometheus/group 2>/dev/null) && kill -- "-$group" 2>/dev/null
    [ -e "$RAY_TMP/ray_current_cluster" ] && timeout 60 ray stop --force >/dev/null 2>&1
    [ -s "$WORK/sshd.pid" ] && kill "$(cat "$WORK/sshd.pid")" 2>/dev/null
    sleep 1
    [ -e "$WORK/made-run-sshd" ] && rmdir /run/sshd 2>/dev/null
    return 0
}

restore_home() {
    if [ -e "$WORK/bashrc" ]; then cp -p "$WORK/bashrc" "$HOME/.bashrc"; elif [ -e "$WORK/bashrc.absent" ]; then rm -f "$HOME/.bashrc"; fi
    if [ -d "$WORK/install-records" ]; then
        local site
        site=$(site_packages)
        rm -rf "$site"/__editable__*gcrl_generative* "$site"/gcrl_generative-*.dist-info
        cp -a "$WORK/install-records/." "$site/"
    fi
    local name
    for name in "${HOME_COPIES[@]}"; do rm -rf "${HOME:?}/$name"; done
    rmdir "$HOME/runs" 2>/dev/null
    [ -e "$WORK/token.absent" ] && rm -f "$HOME/.ray/auth_token" && rmdir "$HOME/.ray" 2>/dev/null
    return 0
}

remove_ray_files() {
    local entry previous
    rm -rf /tmp/gcrl-prometheus "$RAY_TMP/cluster-$CLUSTER.state" "$RAY_TMP/cluster-$CLUSTER.lock" "$(ssh_control_dir)"
    for entry in $(ls -A "$RAY_TMP" 2>/dev/null); do
        grep -qxF "$entry" "$WORK/ray-tmp.before" || [ "$entry" = session_latest ] || rm -rf "${RAY_TMP:?}/$entry"
    done
    previous=$(cat "$WORK/session-latest.before")
    if [ -n "$previous" ]; then ln -sfn "$previous" "$RAY_TMP/session_latest"; else rm -f "$RAY_TMP/session_latest"; fi
    [ -s "$WORK/ray-tmp.before" ] || rmdir "$RAY_TMP" 2>/dev/null
    for entry in /tmp/ray_ssh_*; do grep -qxF "$entry" "$WORK/ray-ssh.before" || rmdir "$entry" 2>/dev/null; done
    for entry in /tmp/ray-config-*; do grep -qxF "$entry" "$WORK/ray-config.before" || rm -f "$entry"; done
    for entry in /tmp/pymp-*; do  # multiprocessing folders of the Ray processes `ray stop` ended
        grep -qxF "$entry" "$WORK/pymp.before" || grep -qF "$entry" /proc/net/unix || rm -rf "$entry"
    done
    return 0
}

check_nothing_left() {
    local entry
    for entry in $(ls -A "$HOME"); do
        grep -qxF "$entry" "$WORK/home.before" || fail "left behind in $HOME: $entry"
    done
    grep -q "gcrl-cluster-check\|gcrl-venv}/bin/activate" "$HOME/.bashrc" 2>/dev/null && fail "~/.bashrc not restored"
    pgrep -f "$WORK/sshd_config" >/dev/null && fail "the check's sshd still runs"
    pgrep -x raylet >/dev/null && fail "a raylet still runs"
    return 0
}

main() {
    preflight
    WORK=$(mktemp -d /tmp/gcrl-cluster-check.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM   # a signal still runs cleanup
    remember_machine
    start_sshd
    point_shells_at_venv
    write_cluster_file
    ray_up
    first_job
    idle_removal
    resume_job
    ray_down
    [ "${GCRL_CHECK_COMPARE:-0}" != 1 ] || compare_direct
}

main "$@"
