#!/bin/sh
# Classify a photo with a deployed app's JSON endpoint, POST /classify (multipart field `file`).
#
#     sh examples/classify.sh https://you-bears-demo.hf.space photo.jpg
#     {"label":"grizzly","confidences":{"grizzly":0.97,...},"in_domain":true,...}
#
# A refused image gets a 4xx and {"error": "<a sentence>", "reason": "<code>"}; curl then exits with 22.
set -eu
if [ $# -ne 2 ]; then
    echo "usage: sh $0 APP_URL PHOTO" >&2
    exit 2
fi
curl --silent --show-error --fail-with-body --form "file=@$2" "${1%/}/classify"
echo
