# Sourced by the benchmarks that run a lab of their own (podready.sh, convergence.sh): the
# temp dir and the lab's removal on exit (however the script ends), the demo's images, and
# the ship pods. Expects M (the myelin binary) and LAB (the lab's name); sets TMP and LAB_UP
# (set it to 1 once `lab up` succeeded). $1 names the temp dir.

TMP=$(mktemp -d "/tmp/myelin-$1.$$.XXXX")
LAB_UP=0
cleanup() {
  [ "$LAB_UP" = 0 ] || "$M" lab --name "$LAB" down >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

IMAGE_APP=quay.io/cilium/starwars:v2.1
IMAGE_SHIP=quay.io/cilium/json-mock:v1.3.8
ship() { # ship NAME ORG [NODE]: a ship pod, pinned to NODE when given
  cat <<SHIP
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels: {org: $2, class: $1}
spec:
${3:+  nodeName: $3
}  containers: [{name: spaceship, image: $IMAGE_SHIP}]
---
SHIP
}
