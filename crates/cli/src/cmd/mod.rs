//! One file per subcommand.
pub mod demo;
pub mod eval;
pub mod eval_tasks;
pub mod generate;
pub mod init;
pub mod inspect;
pub mod make_corpus;
pub mod make_tasks;
pub mod megatron;
pub mod prepare_data;
pub mod progress;
pub mod run;
pub mod scale_out;
pub mod scale_up;
pub mod train;
pub mod train_tokenizer;
pub mod verify;
