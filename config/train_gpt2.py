# GPT-2 small (124M) at context 1024, as nanoGPT's train_gpt2.py: about 0.5M tokens per step
# (12 sequences x 1024 tokens x 40 micro-batches), spread over however many GPUs torchrun starts.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
# Data: a large gpt2-tokenized corpus, e.g. python prepare.py --input=corpus.jsonl --text_field=text \
#       --tokenizer=gpt2 --out_dir=data/openwebtext

out_dir = "out-gpt2"
data_dir = "data/openwebtext"
eval_interval = 1000
eval_iters = 200
log_interval = 10

batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8  # must be divisible by the number of GPUs

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False
# the loss without materializing the logits: the same math; on an H100 at micro-batch 64 it was 1.03x faster and
# held 10.8 GiB less (BENCHMARKS.md; this config's micro-batch of 12 was not measured)
fused_loss = True
# fp8_lm_head = True  # H100/H200: the output layer's three products in float8 too (BENCHMARKS.md)
# bf16_residual = True  # the residual stream in bf16: 1.055-1.068x on an H100, a little less accurate (README)
# fp8 = True  # H100/H200: the blocks' products in float8, 1.066x alone on an H100; one-seed loss checks (README)

learning_rate = 6e-4
max_iters = 600000  # 300B tokens
lr_decay_iters = 600000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1
