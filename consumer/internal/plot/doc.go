// Package plot draws line charts as PNG images with the standard library
// only (image, image/png): the figures that tests of package consumer save
// next to their CSV, such as the in-flight handlers and the limit of
// adaptive concurrency over time. Text is drawn with a built-in 5×7 bitmap
// font of capital letters, digits and common punctuation (lower case is
// drawn as capitals).
package plot
