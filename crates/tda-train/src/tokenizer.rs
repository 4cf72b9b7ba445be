//! Byte-level BPE tokenizers trained on a corpus with the `tokenizers` trainer (GPT-2 style:
//! no normaliser, byte-level pre-tokenizer without prefix space, one special token).

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::TrainError;

/// The special token that separates documents; also used as BOS, EOS and padding.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Trains a byte-level BPE tokenizer with `vocab_size` entries (256 bytes + merges + special token)
/// on `texts`. Deterministic for the same texts.
pub fn train_bpe<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab_size: usize,
) -> Result<Tokenizer, TrainError> {
    if vocab_size < 257 + 1 {
        return Err(TrainError::Config(format!(
            "tokenizer vocab_size {vocab_size} is too small: a byte-level BPE needs at least 258"
        )));
    }
    let byte_level = ByteLevel::new(false, true, true);
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build(),
    );
    let mut tok = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default().into())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(byte_level.into()))
    .with_post_processor(Some(byte_level.into()))
    .with_decoder(Some(byte_level.into()))
    .build()
    .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    tok.train(&mut trainer, texts)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    Ok(Tokenizer::from(tok))
}
