#!/usr/bin/env bash
# The accuracy study behind docs/RESULTS.md, one genre-train run per line, on the real posters.
# Variants are chosen on the validation split (test=false: the test split is not even evaluated);
# the chosen recipe and the study's recipe then run with three seeds each, tested once.
# Round 5 (cv_*): 5-fold cross-validation of every poster, one multirun per recipe (docs/RESULTS.md).
#   scripts/accuracy_runs.sh variants | lpft | final | study | probe | timing | ensembles
#   scripts/accuracy_runs.sh cv_probes | cv_tta | cv_ensembles | cv_best_cpu | cv_lpft | cv_study | cv_final
set -euo pipefail
cd "$(dirname "$0")/.."
POSTERS=${POSTERS:-../shared/data/four_genre_posters}
WEIGHTS=${WEIGHTS:-../shared/weights}
OUT=${OUT:-outputs/accuracy}
# best_cpu takes its weights from the hub; offline, from the local timm file.
LITE0="model.weights=$WEIGHTS/tf_efficientnet_lite0.in1k.safetensors"

finished() { [ -f "$OUT/$1/metrics.json" ]; }  # done already: the list can be re-run after a stop

timed() {  # timed NAME COMMAND...: run it into $OUT/NAME, its wall time appended to $OUT/times.tsv
    local name=$1; shift
    finished "$name" && return 0
    mkdir -p "$OUT"
    local start=$(date +%s)
    "$@" print_config=false hydra.run.dir="$OUT/$name" > "$OUT/$name.log" 2>&1
    printf '%s\t%s\n' "$name" "$(( $(date +%s) - start ))" >> "$OUT/times.tsv"
}

run() {  # run NAME OVERRIDES...: one timed genre-train
    local name=$1; shift
    timed "$name" genre-train data.root="$POSTERS" "$@"
}

FOLDS=5
# The frozen backbone's features, computed once for every poster and reused by the other folds (and by
# the probe of LP-FT): the same features, far fewer forward passes (docs/RESULTS.md, round 5).
CV=(data.folds=$FOLDS callbacks.feature_cache.cache_dir="$OUT/feature_cache")
MNV2="model.weights=$WEIGHTS/mobilenetv2_100.in1k.safetensors"

cv_done() { [ "$(ls "$OUT"/$1/*/metrics.json 2>/dev/null | wc -l)" -ge "${2:-$FOLDS}" ]; }

sweep() {  # sweep NAME OVERRIDES...: one timed 5-fold cross-validation multirun into $OUT/NAME/<fold>
    local name=$1; shift
    cv_done "$name" && return 0
    local fold missing=""  # a stopped sweep runs only the folds without metrics.json (<fold> = data.fold)
    for fold in $(seq 0 $((FOLDS - 1))); do
        [ -f "$OUT/$name/$fold/metrics.json" ] || missing+="${missing:+,}$fold"
    done
    mkdir -p "$OUT"
    local start=$(date +%s)
    genre-train -m data.root="$POSTERS" "${CV[@]}" "data.fold=$missing" "$@" print_config=false \
        hydra.sweep.dir="$OUT/$name" 'hydra.sweep.subdir=${data.fold}' >> "$OUT/$name.log" 2>&1
    printf '%s\t%s\n' "$name" "$(( $(date +%s) - start ))" >> "$OUT/times.tsv"
}

fold_checkpoint() {  # fold_checkpoint SWEEP FOLD: that fold's tested checkpoint
    python -c "import json; print(json.load(open('$OUT/$1/$2/metrics.json'))['best_ckpt_path'])"
}

case "${1:-}" in
variants)
    # Round 1: every layer at lr 1e-3 from the start (then best_cpu), in float32 and bf16.
    run v01_full_finetune       experiment=best_cpu "$LITE0" test=false finetune=none trainer.max_epochs=15
    run v02_full_finetune_bf16  experiment=best_cpu "$LITE0" test=false finetune=none trainer.max_epochs=15 trainer.precision=bf16-mixed
    # Round 2: best_cpu (head first, then the backbone at 0.1x the LR), one change at a time.
    run v03_best_cpu            experiment=best_cpu "$LITE0" test=false
    run v04_gradual             experiment=best_cpu "$LITE0" test=false finetune=gradual finetune.milestones=[1,3,5] finetune.backbone_lr_scale=0.1 finetune.lr_decay=0.5
    # The head phase above is one warm-up epoch at 0.1x LR, too short to train the head (val 0.24
    # after it): train the head for 5 epochs first (linear probe, then fine-tune).
    run v14_head_5_epochs       experiment=best_cpu "$LITE0" test=false finetune.milestones=[5]
    # The head learns slowly at 1e-3 (val 0.44 after 5 epochs): 10x the LR, the backbone at 0.01x.
    run v15_head_lr_1e-2        experiment=best_cpu "$LITE0" test=false finetune.milestones=[3] model.optimizer.lr=1e-2 finetune.backbone_lr_scale=0.01
    run v13_mixup_cutmix        experiment=best_cpu "$LITE0" test=false model.mixup='{mixup_alpha:0.2,cutmix_alpha:1.0,prob:0.5}'
    run v05_randaugment         experiment=best_cpu "$LITE0" test=false +data.augment.auto_augment=rand-m7-mstd0.5
    run v07_ema                 experiment=best_cpu "$LITE0" test=false callbacks=ema
    run v08_no_augment          experiment=best_cpu "$LITE0" test=false data.augment=null
    run v09_square_224          experiment=best_cpu "$LITE0" test=false model.data_config.input_size=[3,224,224]
    run v10_balanced            experiment=best_cpu "$LITE0" test=false data.balanced_sampling=true
    run v11_no_label_smoothing  experiment=best_cpu "$LITE0" test=false model.label_smoothing=0
    run v12_mobilenetv2         experiment=best_cpu test=false model=mobilenetv2_100 model.weights="$WEIGHTS/mobilenetv2_100.in1k.safetensors"
    # Round 3: MobileNetV2 was still rising at epoch 20 (v12): 30 epochs, about 10 minutes.
    run v16_mobilenetv2_30_epochs experiment=best_cpu test=false model=mobilenetv2_100 model.weights="$WEIGHTS/mobilenetv2_100.in1k.safetensors" trainer.max_epochs=30
    # BatchNorm statistics: every run above kept ImageNet's (finetune.freeze_bn_stats=true in best_cpu).
    run v17_bn_stats_update     experiment=best_cpu "$LITE0" test=false finetune.freeze_bn_stats=false
    # Not run for docs/RESULTS.md (time): the linear probe found no gain from 336x224 over 288x192.
    # run v06_384x256           experiment=best_cpu test=false model.data_config.input_size=[3,384,256]
    ;;
final)
    for seed in 1 2 3; do run best_cpu_seed$seed experiment=best_cpu "$LITE0" seed=$seed; done
    ;;
study)
    for seed in 1 2 3; do
        run study_lite0_seed$seed experiment=seed_efficientnet_b0 seed=$seed model.backbone=tf_efficientnet_lite0 \
            model.weights="$WEIGHTS/tf_efficientnet_lite0.in1k.safetensors" model.channels_last=true
    done
    ;;
lpft)
    # Round 4: LP-FT. The head is a fitted linear probe (finetune.head_init=probe) and the backbone
    # trains from epoch 0 (milestones=[0]); 8 epochs, so the run stays inside the study recipe's time.
    LPFT=(experiment=best_cpu "$LITE0" test=false finetune.head_init=probe finetune.milestones=[0] trainer.max_epochs=8)
    run v20_lpft_8_epochs           "${LPFT[@]}"
    # The paper's form: after the probe, every layer at one small LR (the head too).
    run v22_lpft_all_at_1e-4        "${LPFT[@]}" model.optimizer.lr=1e-4 finetune.backbone_lr_scale=1.0
    ;;
probe)
    # The probe has no randomness (fixed features, a deterministic solver): seeds give one result.
    for seed in 1 2 3; do run probe_cpu_seed$seed experiment=probe_cpu "$LITE0" seed=$seed; done
    run probe_cpu_flip        experiment=probe_cpu "$LITE0" model.tta_hflip=true
    run probe_mobilenetv2     experiment=probe_cpu model=mobilenetv2_100 model.weights="$WEIGHTS/mobilenetv2_100.in1k.safetensors"
    ;;
timing)
    # probe_cpu and the study's recipe back to back, same machine, same moment: the time ratio.
    run timing_probe_cpu experiment=probe_cpu "$LITE0"
    run timing_study experiment=seed_efficientnet_b0 model.backbone=tf_efficientnet_lite0 \
        model.weights="$WEIGHTS/tf_efficientnet_lite0.in1k.safetensors" model.channels_last=true
    awk '$1=="timing_probe_cpu"{p=$2} $1=="timing_study"{s=$2} END{printf "probe_cpu %d s, study %d s, ratio %.3f\n", p, s, p/s}' "$OUT/times.tsv"
    ;;
ensembles)
    # genre-ensemble of finished runs (final and probe above): their best checkpoints, tested.
    best() { python -c "import json; print(json.load(open('$OUT/$1/metrics.json'))['best_ckpt_path'])"; }
    ensemble() {  # ensemble NAME RUN...: one timed genre-ensemble of the runs' best checkpoints
        local name=$1; shift
        finished "$name" && return 0  # before reading the members, which may have been cleared since
        local members=() run
        for run in "$@"; do members+=("$(best "$run")"); done
        timed "$name" genre-ensemble "ckpt_paths=[$(IFS=,; echo "${members[*]}")]"
    }
    ensemble ens_best_cpu_3_seeds        best_cpu_seed1 best_cpu_seed2 best_cpu_seed3
    ensemble ens_best_cpu_mobilenetv2    best_cpu_seed1 probe_mobilenetv2
    ensemble ens_probes_lite0_mobilenetv2 probe_cpu_seed1 probe_mobilenetv2
    ;;
cv_probes)
    # Round 5: every recipe by 5-fold cross-validation of all 1,070 posters (split_seed 0: every
    # sweep below makes the same fold assignment, which genre-report checks). Inside a fold, the
    # best epoch, the probe's C and the temperature are chosen on an inner validation split
    # (data.cv_val_fraction=0.15 of the training folds), never on the fold it reports.
    sweep cv_probe_lite0            experiment=probe_cpu "$LITE0"
    sweep cv_probe_lite0_flip       experiment=probe_cpu "$LITE0" model.tta_hflip=true
    sweep cv_probe_mobilenetv2      experiment=probe_cpu model=mobilenetv2_100 "$MNV2"
    sweep cv_probe_mobilenetv2_flip experiment=probe_cpu model=mobilenetv2_100 "$MNV2" model.tta_hflip=true
    ;;
cv_tta)
    # Round 7: test-time views beyond the flip, on the folds of rounds 5/6 (the probe is fitted on the
    # features averaged over the same views). DATA_CACHE=<folder>: decoded posters kept between folds.
    TTA=(experiment=probe_cpu "$LITE0" ${DATA_CACHE:+"data.cache_dir=$DATA_CACHE"})
    sweep cv_tta_flip               "${TTA[@]}"                                   # 2 views
    sweep cv_tta_scales             "${TTA[@]}" 'model.tta={scales: [1.0, 1.15]}' # 4 views
    sweep cv_tta_center_crop        "${TTA[@]}" 'model.tta={crops: center}'       # 4 views
    ;;
cv_best_cpu)
    sweep cv_best_cpu               experiment=best_cpu "$LITE0"
    ;;
cv_lpft)
    # Cheaper LP-FT: 3 epochs, and 3 epochs with the backbone at 0.03x (features move less).
    sweep cv_lpft_3_epochs          experiment=best_cpu "$LITE0" trainer.max_epochs=3
    sweep cv_lpft_3_epochs_bb0.03   experiment=best_cpu "$LITE0" trainer.max_epochs=3 finetune.backbone_lr_scale=0.03
    ;;
cv_study)
    sweep cv_study_lite0            experiment=seed_efficientnet_b0 model.backbone=tf_efficientnet_lite0 \
        "$LITE0" model.channels_last=true
    ;;
cv_ensembles)
    # The two-backbone probe: per fold, genre-ensemble of that fold's Lite0 and MobileNetV2 probes
    # (their calibrated probabilities averaged), tested on the fold they both held out.
    for variant in "" _flip; do
        mkdir -p "$OUT/cv_probe_lite0_mobilenetv2$variant"
        for fold in $(seq 0 $((FOLDS - 1))); do
            name=cv_probe_lite0_mobilenetv2$variant/$fold
            finished "$name" && continue
            timed "$name" genre-ensemble "ckpt_paths=[$(fold_checkpoint cv_probe_lite0$variant $fold),$(fold_checkpoint cv_probe_mobilenetv2$variant $fold)]"
        done
    done
    ;;
cv_final)
    # The model that ships, in both forms, tested on a fixed test part: 20% of the posters kept out of
    # every fold, 5-fold CV of the chosen recipe on the rest, then its refit and its fold ensemble made
    # with the commands genre-report prints (median best epoch, temperature and probe C of the folds).
    FINAL=(experiment=probe_cpu "$LITE0" model.tta_hflip=true)
    mkdir -p "$OUT/cv_final"
    sweep cv_final/folds "${FINAL[@]}" data.cv_test_fraction=0.2
    genre-report sweep_dir="$OUT/cv_final/folds" > "$OUT/cv_final/folds_report.log" 2>&1
    for form in fold_ensemble:genre-ensemble refit:genre-train; do
        command=$(grep -m1 "^    ${form#*:} " "$OUT/cv_final/folds/report.md")
        timed "cv_final/${form%%:*}" eval "$command"
    done
    genre-report sweep_dir="$OUT/cv_final" > "$OUT/cv_final/report.log" 2>&1
    ;;
*)
    echo "usage: $0 variants|lpft|final|study|probe|timing|ensembles|cv_probes|cv_tta|cv_best_cpu|cv_lpft|cv_study|cv_ensembles|cv_final" >&2; exit 2 ;;
esac
