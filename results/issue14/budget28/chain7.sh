#!/bin/bash
# item 3's command, second half: the export, once training (started by chain6.sh) ends.
while pgrep -f "model_dir=/work/runs/full5085/model" > /dev/null; do sleep 1; done
cd /work/frozen42 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen42
/usr/bin/time -v python tools/export.py --model_dir=/work/runs/full5085/model > /work/runs/full5085/export_console.txt 2> /work/runs/full5085/export_time.txt
echo "full5085 done $(date)"
