# Fine-tune a pretrained GPT-2 (a Hugging Face folder, or one of our checkpoints) on your own text, as nanoGPT's
# finetune_shakespeare: a short run at a small, constant learning rate (best.pt keeps the lowest val loss).
#   python prepare.py --input=mybook.txt --out_dir=data/mybook_gpt2           (GPT-2 BPE, the model's tokenizer)
#   python train.py config/finetune_gpt2.py --init_from=path/to/hf-gpt2 --data_dir=data/mybook_gpt2
# (The settings not named here are train.py's GPT-2 pretraining defaults.)

out_dir = "out-finetune"
eval_interval = 100
eval_iters = 40
log_interval = 10

block_size = 256  # GPT-2's 1024 positions cropped: faster, and enough for most fine-tuning text
batch_size = 8
gradient_accumulation_steps = 4  # 32 sequences x 256 tokens a step
dropout = 0.1

learning_rate = 3e-5
decay_lr = False
warmup_iters = 0
max_iters = 1000
